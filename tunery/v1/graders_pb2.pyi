from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunGraderRequest(_message.Message):
    __slots__ = ("grader", "model_sample", "item")
    GRADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    grader: _struct_pb2.Struct
    model_sample: str
    item: _struct_pb2.Struct
    def __init__(self, grader: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., model_sample: _Optional[str] = ..., item: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RunGraderErrors(_message.Message):
    __slots__ = ("formula_parse_error", "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error", "invalid_variable_error", "other_error", "python_grader_server_error", "python_grader_server_error_type", "python_grader_runtime_error", "python_grader_runtime_error_details", "model_grader_server_error", "model_grader_refusal_error", "model_grader_parse_error", "model_grader_server_error_details")
    FORMULA_PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_OBSERVATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    UNRESPONSIVE_REWARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    INVALID_VARIABLE_ERROR_FIELD_NUMBER: _ClassVar[int]
    OTHER_ERROR_FIELD_NUMBER: _ClassVar[int]
    PYTHON_GRADER_SERVER_ERROR_FIELD_NUMBER: _ClassVar[int]
    PYTHON_GRADER_SERVER_ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_GRADER_RUNTIME_ERROR_FIELD_NUMBER: _ClassVar[int]
    PYTHON_GRADER_RUNTIME_ERROR_DETAILS_FIELD_NUMBER: _ClassVar[int]
    MODEL_GRADER_SERVER_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_GRADER_REFUSAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_GRADER_PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_GRADER_SERVER_ERROR_DETAILS_FIELD_NUMBER: _ClassVar[int]
    formula_parse_error: bool
    sample_parse_error: bool
    truncated_observation_error: bool
    unresponsive_reward_error: bool
    invalid_variable_error: bool
    other_error: bool
    python_grader_server_error: bool
    python_grader_server_error_type: str
    python_grader_runtime_error: bool
    python_grader_runtime_error_details: str
    model_grader_server_error: bool
    model_grader_refusal_error: bool
    model_grader_parse_error: bool
    model_grader_server_error_details: str
    def __init__(self, formula_parse_error: _Optional[bool] = ..., sample_parse_error: _Optional[bool] = ..., truncated_observation_error: _Optional[bool] = ..., unresponsive_reward_error: _Optional[bool] = ..., invalid_variable_error: _Optional[bool] = ..., other_error: _Optional[bool] = ..., python_grader_server_error: _Optional[bool] = ..., python_grader_server_error_type: _Optional[str] = ..., python_grader_runtime_error: _Optional[bool] = ..., python_grader_runtime_error_details: _Optional[str] = ..., model_grader_server_error: _Optional[bool] = ..., model_grader_refusal_error: _Optional[bool] = ..., model_grader_parse_error: _Optional[bool] = ..., model_grader_server_error_details: _Optional[str] = ...) -> None: ...

class RunGraderMetadata(_message.Message):
    __slots__ = ("name", "type", "errors", "execution_time", "scores", "token_usage", "sampled_model_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_USAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    errors: RunGraderErrors
    execution_time: float
    scores: _struct_pb2.Struct
    token_usage: int
    sampled_model_name: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., errors: _Optional[_Union[RunGraderErrors, _Mapping]] = ..., execution_time: _Optional[float] = ..., scores: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., token_usage: _Optional[int] = ..., sampled_model_name: _Optional[str] = ...) -> None: ...

class RunGraderResponse(_message.Message):
    __slots__ = ("reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SUB_REWARDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_GRADER_TOKEN_USAGE_PER_MODEL_FIELD_NUMBER: _ClassVar[int]
    reward: float
    metadata: RunGraderMetadata
    sub_rewards: _struct_pb2.Struct
    model_grader_token_usage_per_model: _struct_pb2.Struct
    def __init__(self, reward: _Optional[float] = ..., metadata: _Optional[_Union[RunGraderMetadata, _Mapping]] = ..., sub_rewards: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., model_grader_token_usage_per_model: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ValidateGraderRequest(_message.Message):
    __slots__ = ("grader",)
    GRADER_FIELD_NUMBER: _ClassVar[int]
    grader: _struct_pb2.Struct
    def __init__(self, grader: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ValidateGraderResponse(_message.Message):
    __slots__ = ("grader",)
    GRADER_FIELD_NUMBER: _ClassVar[int]
    grader: _struct_pb2.Struct
    def __init__(self, grader: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
