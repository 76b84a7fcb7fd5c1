from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunRef(_message.Message):
    __slots__ = ("job_id", "run_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_token: str
    def __init__(self, job_id: _Optional[str] = ..., run_token: _Optional[str] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("cancel_requested", "pause_requested", "cpu_threads")
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    cancel_requested: bool
    pause_requested: bool
    cpu_threads: int
    def __init__(self, cancel_requested: _Optional[bool] = ..., pause_requested: _Optional[bool] = ..., cpu_threads: _Optional[int] = ...) -> None: ...

class StartedRequest(_message.Message):
    __slots__ = ("run", "total_steps", "train_examples", "train_tokens_per_epoch", "hyperparameters_json")
    RUN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TOKENS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    total_steps: int
    train_examples: int
    train_tokens_per_epoch: int
    hyperparameters_json: str
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., total_steps: _Optional[int] = ..., train_examples: _Optional[int] = ..., train_tokens_per_epoch: _Optional[int] = ..., hyperparameters_json: _Optional[str] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "total_steps", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy", "learning_rate", "tokens_per_second", "epoch", "peak_memory_gib", "method_metrics")
    class MethodMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VALID_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALID_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FULL_VALID_LOSS_FIELD_NUMBER: _ClassVar[int]
    FULL_VALID_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_GIB_FIELD_NUMBER: _ClassVar[int]
    METHOD_METRICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float
    valid_loss: float
    valid_mean_token_accuracy: float
    full_valid_loss: float
    full_valid_mean_token_accuracy: float
    learning_rate: float
    tokens_per_second: float
    epoch: float
    peak_memory_gib: float
    method_metrics: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., train_loss: _Optional[float] = ..., train_mean_token_accuracy: _Optional[float] = ..., valid_loss: _Optional[float] = ..., valid_mean_token_accuracy: _Optional[float] = ..., full_valid_loss: _Optional[float] = ..., full_valid_mean_token_accuracy: _Optional[float] = ..., learning_rate: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., epoch: _Optional[float] = ..., peak_memory_gib: _Optional[float] = ..., method_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("run", "metrics")
    RUN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    metrics: StepMetrics
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., metrics: _Optional[_Union[StepMetrics, _Mapping]] = ...) -> None: ...

class EventRequest(_message.Message):
    __slots__ = ("run", "level", "message", "data_json")
    RUN_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    level: str
    message: str
    data_json: str
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., level: _Optional[str] = ..., message: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("run", "step", "object_prefix", "metrics")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBJECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    step: int
    object_prefix: str
    metrics: StepMetrics
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., step: _Optional[int] = ..., object_prefix: _Optional[str] = ..., metrics: _Optional[_Union[StepMetrics, _Mapping]] = ...) -> None: ...

class FinishedRequest(_message.Message):
    __slots__ = ("run", "succeeded", "model_prefix", "results_key", "trained_tokens", "error_code", "error_message", "error_param")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    MODEL_PREFIX_FIELD_NUMBER: _ClassVar[int]
    RESULTS_KEY_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_PARAM_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    succeeded: bool
    model_prefix: str
    results_key: str
    trained_tokens: int
    error_code: str
    error_message: str
    error_param: str
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., succeeded: _Optional[bool] = ..., model_prefix: _Optional[str] = ..., results_key: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., error_param: _Optional[str] = ...) -> None: ...

class AccessRequest(_message.Message):
    __slots__ = ("run", "op", "key", "upload_id", "part_number", "parts")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[AccessRequest.Op]
        OP_READ: _ClassVar[AccessRequest.Op]
        OP_WRITE: _ClassVar[AccessRequest.Op]
        OP_STAT: _ClassVar[AccessRequest.Op]
        OP_LIST: _ClassVar[AccessRequest.Op]
        OP_DELETE: _ClassVar[AccessRequest.Op]
        OP_START_UPLOAD: _ClassVar[AccessRequest.Op]
        OP_WRITE_PART: _ClassVar[AccessRequest.Op]
        OP_COMPLETE_UPLOAD: _ClassVar[AccessRequest.Op]
        OP_ABORT_UPLOAD: _ClassVar[AccessRequest.Op]
    OP_UNSPECIFIED: AccessRequest.Op
    OP_READ: AccessRequest.Op
    OP_WRITE: AccessRequest.Op
    OP_STAT: AccessRequest.Op
    OP_LIST: AccessRequest.Op
    OP_DELETE: AccessRequest.Op
    OP_START_UPLOAD: AccessRequest.Op
    OP_WRITE_PART: AccessRequest.Op
    OP_COMPLETE_UPLOAD: AccessRequest.Op
    OP_ABORT_UPLOAD: AccessRequest.Op
    RUN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    op: AccessRequest.Op
    key: str
    upload_id: str
    part_number: int
    parts: _containers.RepeatedCompositeFieldContainer[UploadedPart]
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., op: _Optional[_Union[AccessRequest.Op, str]] = ..., key: _Optional[str] = ..., upload_id: _Optional[str] = ..., part_number: _Optional[int] = ..., parts: _Optional[_Iterable[_Union[UploadedPart, _Mapping]]] = ...) -> None: ...

class UploadedPart(_message.Message):
    __slots__ = ("part_number", "etag")
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    part_number: int
    etag: str
    def __init__(self, part_number: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class AccessReply(_message.Message):
    __slots__ = ("url", "exists", "size", "keys", "upload_id")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    url: str
    exists: bool
    size: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    upload_id: str
    def __init__(self, url: _Optional[str] = ..., exists: _Optional[bool] = ..., size: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., upload_id: _Optional[str] = ...) -> None: ...
