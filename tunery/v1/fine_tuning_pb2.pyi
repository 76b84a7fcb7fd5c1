from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hyperparameters(_message.Message):
    __slots__ = ("batch_size", "learning_rate_multiplier", "n_epochs", "beta")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    N_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    batch_size: _struct_pb2.Value
    learning_rate_multiplier: _struct_pb2.Value
    n_epochs: _struct_pb2.Value
    beta: _struct_pb2.Value
    def __init__(self, batch_size: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., learning_rate_multiplier: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., n_epochs: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., beta: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class MethodSection(_message.Message):
    __slots__ = ("hyperparameters",)
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    hyperparameters: Hyperparameters
    def __init__(self, hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ...) -> None: ...

class ReinforcementHyperparameters(_message.Message):
    __slots__ = ("batch_size", "learning_rate_multiplier", "n_epochs", "eval_interval", "eval_samples", "compute_multiplier", "reasoning_effort")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    N_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    EVAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    REASONING_EFFORT_FIELD_NUMBER: _ClassVar[int]
    batch_size: _struct_pb2.Value
    learning_rate_multiplier: _struct_pb2.Value
    n_epochs: _struct_pb2.Value
    eval_interval: _struct_pb2.Value
    eval_samples: _struct_pb2.Value
    compute_multiplier: _struct_pb2.Value
    reasoning_effort: str
    def __init__(self, batch_size: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., learning_rate_multiplier: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., n_epochs: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., eval_interval: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., eval_samples: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., compute_multiplier: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., reasoning_effort: _Optional[str] = ...) -> None: ...

class ReinforcementSection(_message.Message):
    __slots__ = ("grader", "hyperparameters", "response_format")
    GRADER_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    grader: _struct_pb2.Struct
    hyperparameters: ReinforcementHyperparameters
    response_format: _struct_pb2.Struct
    def __init__(self, grader: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., hyperparameters: _Optional[_Union[ReinforcementHyperparameters, _Mapping]] = ..., response_format: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Method(_message.Message):
    __slots__ = ("type", "supervised", "dpo", "reinforcement")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUPERVISED_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    REINFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    type: str
    supervised: MethodSection
    dpo: MethodSection
    reinforcement: ReinforcementSection
    def __init__(self, type: _Optional[str] = ..., supervised: _Optional[_Union[MethodSection, _Mapping]] = ..., dpo: _Optional[_Union[MethodSection, _Mapping]] = ..., reinforcement: _Optional[_Union[ReinforcementSection, _Mapping]] = ...) -> None: ...

class ReinforcementOptions(_message.Message):
    __slots__ = ("num_generations", "max_completion_length", "kl_coef", "temperature")
    NUM_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    num_generations: _struct_pb2.Value
    max_completion_length: int
    kl_coef: float
    temperature: float
    def __init__(self, num_generations: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., max_completion_length: _Optional[int] = ..., kl_coef: _Optional[float] = ..., temperature: _Optional[float] = ...) -> None: ...

class MixOptions(_message.Message):
    __slots__ = ("file", "fraction")
    FILE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    file: str
    fraction: float
    def __init__(self, file: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class DataQualityOptions(_message.Message):
    __slots__ = ("drop_duplicates", "long_examples", "mix")
    DROP_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    LONG_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MIX_FIELD_NUMBER: _ClassVar[int]
    drop_duplicates: bool
    long_examples: str
    mix: MixOptions
    def __init__(self, drop_duplicates: _Optional[bool] = ..., long_examples: _Optional[str] = ..., mix: _Optional[_Union[MixOptions, _Mapping]] = ...) -> None: ...

class LoraOptions(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: _struct_pb2.Value
    dropout: float
    target_modules: _struct_pb2.Value
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class TrainingOptions(_message.Message):
    __slots__ = ("lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "train_on_inputs", "adapter", "neftune_noise_alpha", "warmup_ratio", "max_seq_length", "gradient_accumulation_steps", "n_checkpoints", "n_evals", "packing", "precision", "lora", "gradient_checkpointing", "batch_tokens")
    LR_SCHEDULER_TYPE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ON_INPUTS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    NEFTUNE_NOISE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    N_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    N_EVALS_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    lr_scheduler_type: str
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    train_on_inputs: bool
    adapter: str
    neftune_noise_alpha: float
    warmup_ratio: float
    max_seq_length: _struct_pb2.Value
    gradient_accumulation_steps: int
    n_checkpoints: _struct_pb2.Value
    n_evals: _struct_pb2.Value
    packing: bool
    precision: str
    lora: LoraOptions
    gradient_checkpointing: _struct_pb2.Value
    batch_tokens: int
    def __init__(self, lr_scheduler_type: _Optional[str] = ..., warmup_steps: _Optional[int] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., train_on_inputs: _Optional[bool] = ..., adapter: _Optional[str] = ..., neftune_noise_alpha: _Optional[float] = ..., warmup_ratio: _Optional[float] = ..., max_seq_length: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., gradient_accumulation_steps: _Optional[int] = ..., n_checkpoints: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., n_evals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., packing: _Optional[bool] = ..., precision: _Optional[str] = ..., lora: _Optional[_Union[LoraOptions, _Mapping]] = ..., gradient_checkpointing: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., batch_tokens: _Optional[int] = ...) -> None: ...

class MethodOptions(_message.Message):
    __slots__ = ("trainer",)
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    trainer: str
    def __init__(self, trainer: _Optional[str] = ...) -> None: ...

class SchedulingOptions(_message.Message):
    __slots__ = ("priority",)
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    priority: int
    def __init__(self, priority: _Optional[int] = ...) -> None: ...

class EvalGate(_message.Message):
    __slots__ = ("min_validation_improvement", "max_forgetting", "min_reward_improvement")
    MIN_VALIDATION_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_FORGETTING_FIELD_NUMBER: _ClassVar[int]
    MIN_REWARD_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    min_validation_improvement: float
    max_forgetting: float
    min_reward_improvement: float
    def __init__(self, min_validation_improvement: _Optional[float] = ..., max_forgetting: _Optional[float] = ..., min_reward_improvement: _Optional[float] = ...) -> None: ...

class EvalOptions(_message.Message):
    __slots__ = ("enabled", "samples", "max_new_tokens", "max_examples", "reference_file", "forgetting_threshold", "gate", "promote_to_alias", "precision")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FILE_FIELD_NUMBER: _ClassVar[int]
    FORGETTING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_TO_ALIAS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    samples: int
    max_new_tokens: int
    max_examples: int
    reference_file: str
    forgetting_threshold: float
    gate: EvalGate
    promote_to_alias: str
    precision: str
    def __init__(self, enabled: _Optional[bool] = ..., samples: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_examples: _Optional[int] = ..., reference_file: _Optional[str] = ..., forgetting_threshold: _Optional[float] = ..., gate: _Optional[_Union[EvalGate, _Mapping]] = ..., promote_to_alias: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...

class EvalReportSummary(_message.Message):
    __slots__ = ("file_id", "step", "validation_loss", "validation_change", "forgetting_change", "forgetting_flagged", "gate_passed", "reward", "reward_change")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_CHANGE_FIELD_NUMBER: _ClassVar[int]
    FORGETTING_CHANGE_FIELD_NUMBER: _ClassVar[int]
    FORGETTING_FLAGGED_FIELD_NUMBER: _ClassVar[int]
    GATE_PASSED_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    REWARD_CHANGE_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    step: int
    validation_loss: float
    validation_change: float
    forgetting_change: float
    forgetting_flagged: bool
    gate_passed: bool
    reward: float
    reward_change: float
    def __init__(self, file_id: _Optional[str] = ..., step: _Optional[int] = ..., validation_loss: _Optional[float] = ..., validation_change: _Optional[float] = ..., forgetting_change: _Optional[float] = ..., forgetting_flagged: _Optional[bool] = ..., gate_passed: _Optional[bool] = ..., reward: _Optional[float] = ..., reward_change: _Optional[float] = ...) -> None: ...

class TuneryExtensions(_message.Message):
    __slots__ = ("data", "training", "method", "scheduling", "eval", "reinforcement")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    REINFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    data: DataQualityOptions
    training: TrainingOptions
    method: MethodOptions
    scheduling: SchedulingOptions
    eval: EvalOptions
    reinforcement: ReinforcementOptions
    def __init__(self, data: _Optional[_Union[DataQualityOptions, _Mapping]] = ..., training: _Optional[_Union[TrainingOptions, _Mapping]] = ..., method: _Optional[_Union[MethodOptions, _Mapping]] = ..., scheduling: _Optional[_Union[SchedulingOptions, _Mapping]] = ..., eval: _Optional[_Union[EvalOptions, _Mapping]] = ..., reinforcement: _Optional[_Union[ReinforcementOptions, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("model", "training_file", "validation_file", "suffix", "seed", "metadata", "hyperparameters", "method", "integrations", "tunery")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILE_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    TUNERY_FIELD_NUMBER: _ClassVar[int]
    model: str
    training_file: str
    validation_file: str
    suffix: str
    seed: int
    metadata: _containers.ScalarMap[str, str]
    hyperparameters: Hyperparameters
    method: Method
    integrations: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    tunery: TuneryExtensions
    def __init__(self, model: _Optional[str] = ..., training_file: _Optional[str] = ..., validation_file: _Optional[str] = ..., suffix: _Optional[str] = ..., seed: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., method: _Optional[_Union[Method, _Mapping]] = ..., integrations: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., tunery: _Optional[_Union[TuneryExtensions, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("after", "limit", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    after: str
    limit: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, after: _Optional[str] = ..., limit: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("job_id", "after", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after: str
    limit: int
    def __init__(self, job_id: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("job_id", "after")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after: str
    def __init__(self, job_id: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id", "after", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after: str
    limit: int
    def __init__(self, job_id: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class FineTuningJobError(_message.Message):
    __slots__ = ("code", "message", "param")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARAM_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    param: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., param: _Optional[str] = ...) -> None: ...

class WandbIntegration(_message.Message):
    __slots__ = ("project", "name", "entity", "tags", "run_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    name: str
    entity: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    def __init__(self, project: _Optional[str] = ..., name: _Optional[str] = ..., entity: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ...) -> None: ...

class MlflowIntegration(_message.Message):
    __slots__ = ("tracking_uri", "experiment_name", "run_name")
    TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    tracking_uri: str
    experiment_name: str
    run_name: str
    def __init__(self, tracking_uri: _Optional[str] = ..., experiment_name: _Optional[str] = ..., run_name: _Optional[str] = ...) -> None: ...

class JobIntegration(_message.Message):
    __slots__ = ("type", "wandb", "mlflow")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WANDB_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_FIELD_NUMBER: _ClassVar[int]
    type: str
    wandb: WandbIntegration
    mlflow: MlflowIntegration
    def __init__(self, type: _Optional[str] = ..., wandb: _Optional[_Union[WandbIntegration, _Mapping]] = ..., mlflow: _Optional[_Union[MlflowIntegration, _Mapping]] = ...) -> None: ...

class JobScheduling(_message.Message):
    __slots__ = ("priority", "queue_position")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    priority: int
    queue_position: int
    def __init__(self, priority: _Optional[int] = ..., queue_position: _Optional[int] = ...) -> None: ...

class JobTunery(_message.Message):
    __slots__ = ("data", "training", "method", "scheduling", "eval", "eval_report", "reinforcement")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    EVAL_REPORT_FIELD_NUMBER: _ClassVar[int]
    REINFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    data: DataQualityOptions
    training: TrainingOptions
    method: MethodOptions
    scheduling: JobScheduling
    eval: EvalOptions
    eval_report: EvalReportSummary
    reinforcement: ReinforcementOptions
    def __init__(self, data: _Optional[_Union[DataQualityOptions, _Mapping]] = ..., training: _Optional[_Union[TrainingOptions, _Mapping]] = ..., method: _Optional[_Union[MethodOptions, _Mapping]] = ..., scheduling: _Optional[_Union[JobScheduling, _Mapping]] = ..., eval: _Optional[_Union[EvalOptions, _Mapping]] = ..., eval_report: _Optional[_Union[EvalReportSummary, _Mapping]] = ..., reinforcement: _Optional[_Union[ReinforcementOptions, _Mapping]] = ...) -> None: ...

class FineTuningJob(_message.Message):
    __slots__ = ("id", "object", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters", "model", "organization_id", "result_files", "seed", "status", "trained_tokens", "training_file", "validation_file", "integrations", "estimated_finish", "method", "metadata", "user_provided_suffix", "tunery")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNED_MODEL_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FILES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILE_FIELD_NUMBER: _ClassVar[int]
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FINISH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    USER_PROVIDED_SUFFIX_FIELD_NUMBER: _ClassVar[int]
    TUNERY_FIELD_NUMBER: _ClassVar[int]
    id: str
    object: str
    created_at: int
    error: FineTuningJobError
    fine_tuned_model: str
    finished_at: int
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    status: str
    trained_tokens: int
    training_file: str
    validation_file: str
    integrations: _containers.RepeatedCompositeFieldContainer[JobIntegration]
    estimated_finish: int
    method: Method
    metadata: _containers.ScalarMap[str, str]
    user_provided_suffix: str
    tunery: JobTunery
    def __init__(self, id: _Optional[str] = ..., object: _Optional[str] = ..., created_at: _Optional[int] = ..., error: _Optional[_Union[FineTuningJobError, _Mapping]] = ..., fine_tuned_model: _Optional[str] = ..., finished_at: _Optional[int] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., model: _Optional[str] = ..., organization_id: _Optional[str] = ..., result_files: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., status: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., training_file: _Optional[str] = ..., validation_file: _Optional[str] = ..., integrations: _Optional[_Iterable[_Union[JobIntegration, _Mapping]]] = ..., estimated_finish: _Optional[int] = ..., method: _Optional[_Union[Method, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., user_provided_suffix: _Optional[str] = ..., tunery: _Optional[_Union[JobTunery, _Mapping]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("object", "data", "first_id", "last_id", "has_more")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    object: str
    data: _containers.RepeatedCompositeFieldContainer[FineTuningJob]
    first_id: str
    last_id: str
    has_more: bool
    def __init__(self, object: _Optional[str] = ..., data: _Optional[_Iterable[_Union[FineTuningJob, _Mapping]]] = ..., first_id: _Optional[str] = ..., last_id: _Optional[str] = ..., has_more: _Optional[bool] = ...) -> None: ...

class FineTuningJobEvent(_message.Message):
    __slots__ = ("id", "object", "created_at", "level", "message", "type", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    object: str
    created_at: int
    level: str
    message: str
    type: str
    data: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., object: _Optional[str] = ..., created_at: _Optional[int] = ..., level: _Optional[str] = ..., message: _Optional[str] = ..., type: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("object", "data", "first_id", "last_id", "has_more")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    object: str
    data: _containers.RepeatedCompositeFieldContainer[FineTuningJobEvent]
    first_id: str
    last_id: str
    has_more: bool
    def __init__(self, object: _Optional[str] = ..., data: _Optional[_Iterable[_Union[FineTuningJobEvent, _Mapping]]] = ..., first_id: _Optional[str] = ..., last_id: _Optional[str] = ..., has_more: _Optional[bool] = ...) -> None: ...

class CheckpointTunery(_message.Message):
    __slots__ = ("best", "eval_report")
    BEST_FIELD_NUMBER: _ClassVar[int]
    EVAL_REPORT_FIELD_NUMBER: _ClassVar[int]
    best: bool
    eval_report: EvalReportSummary
    def __init__(self, best: _Optional[bool] = ..., eval_report: _Optional[_Union[EvalReportSummary, _Mapping]] = ...) -> None: ...

class FineTuningJobCheckpoint(_message.Message):
    __slots__ = ("id", "object", "created_at", "fine_tuned_model_checkpoint", "fine_tuning_job_id", "step_number", "metrics", "tunery")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNED_MODEL_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNING_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TUNERY_FIELD_NUMBER: _ClassVar[int]
    id: str
    object: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: _struct_pb2.Struct
    tunery: CheckpointTunery
    def __init__(self, id: _Optional[str] = ..., object: _Optional[str] = ..., created_at: _Optional[int] = ..., fine_tuned_model_checkpoint: _Optional[str] = ..., fine_tuning_job_id: _Optional[str] = ..., step_number: _Optional[int] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tunery: _Optional[_Union[CheckpointTunery, _Mapping]] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("object", "data", "first_id", "last_id", "has_more")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    object: str
    data: _containers.RepeatedCompositeFieldContainer[FineTuningJobCheckpoint]
    first_id: str
    last_id: str
    has_more: bool
    def __init__(self, object: _Optional[str] = ..., data: _Optional[_Iterable[_Union[FineTuningJobCheckpoint, _Mapping]]] = ..., first_id: _Optional[str] = ..., last_id: _Optional[str] = ..., has_more: _Optional[bool] = ...) -> None: ...

class FineTuningJobEstimate(_message.Message):
    __slots__ = ("object", "model", "training_file", "hyperparameters", "estimated_finish", "estimate")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FINISH_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    object: str
    model: str
    training_file: str
    hyperparameters: Hyperparameters
    estimated_finish: int
    estimate: _struct_pb2.Struct
    def __init__(self, object: _Optional[str] = ..., model: _Optional[str] = ..., training_file: _Optional[str] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., estimated_finish: _Optional[int] = ..., estimate: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetCheckpointEvalReportRequest(_message.Message):
    __slots__ = ("job_id", "checkpoint_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    checkpoint_id: str
    def __init__(self, job_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ...) -> None: ...

class JobEvalReport(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _struct_pb2.Struct
    def __init__(self, report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
