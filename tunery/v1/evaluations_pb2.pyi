from google.protobuf import struct_pb2 as _struct_pb2
from tunery.v1 import fine_tuning_pb2 as _fine_tuning_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportOptions(_message.Message):
    __slots__ = ("samples", "max_new_tokens", "max_examples", "reference_file", "forgetting_threshold", "precision")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FILE_FIELD_NUMBER: _ClassVar[int]
    FORGETTING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    samples: int
    max_new_tokens: int
    max_examples: int
    reference_file: str
    forgetting_threshold: float
    precision: str
    def __init__(self, samples: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_examples: _Optional[int] = ..., reference_file: _Optional[str] = ..., forgetting_threshold: _Optional[float] = ..., precision: _Optional[str] = ...) -> None: ...

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("model", "file", "seed", "eval", "grader")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    GRADER_FIELD_NUMBER: _ClassVar[int]
    model: str
    file: str
    seed: int
    eval: ReportOptions
    grader: _struct_pb2.Struct
    def __init__(self, model: _Optional[str] = ..., file: _Optional[str] = ..., seed: _Optional[int] = ..., eval: _Optional[_Union[ReportOptions, _Mapping]] = ..., grader: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "object", "created_at", "finished_at", "status", "model", "base_model", "file", "seed", "eval", "error", "report", "result_files", "grader")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FILES_FIELD_NUMBER: _ClassVar[int]
    GRADER_FIELD_NUMBER: _ClassVar[int]
    id: str
    object: str
    created_at: int
    finished_at: int
    status: str
    model: str
    base_model: str
    file: str
    seed: int
    eval: ReportOptions
    error: _fine_tuning_pb2.FineTuningJobError
    report: _fine_tuning_pb2.EvalReportSummary
    result_files: _containers.RepeatedScalarFieldContainer[str]
    grader: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., object: _Optional[str] = ..., created_at: _Optional[int] = ..., finished_at: _Optional[int] = ..., status: _Optional[str] = ..., model: _Optional[str] = ..., base_model: _Optional[str] = ..., file: _Optional[str] = ..., seed: _Optional[int] = ..., eval: _Optional[_Union[ReportOptions, _Mapping]] = ..., error: _Optional[_Union[_fine_tuning_pb2.FineTuningJobError, _Mapping]] = ..., report: _Optional[_Union[_fine_tuning_pb2.EvalReportSummary, _Mapping]] = ..., result_files: _Optional[_Iterable[str]] = ..., grader: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("after", "limit")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after: str
    limit: int
    def __init__(self, after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("object", "data", "first_id", "last_id", "has_more")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    object: str
    data: _containers.RepeatedCompositeFieldContainer[Evaluation]
    first_id: str
    last_id: str
    has_more: bool
    def __init__(self, object: _Optional[str] = ..., data: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., first_id: _Optional[str] = ..., last_id: _Optional[str] = ..., has_more: _Optional[bool] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class GetEvaluationReportRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _struct_pb2.Struct
    def __init__(self, report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
