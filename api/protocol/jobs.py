"""Fine-tuning jobs: ``/v1/fine_tuning/jobs`` with its events, checkpoints, pause and resume, as OpenAI's schema has
them (``CreateFineTuningJobRequest``, ``FineTuneMethod``, ``FineTuningJob``, ``FineTuningJobEvent``,
``FineTuningJobCheckpoint`` and their lists); Tunery's extensions of a job (``tunery.*``); and the answer of its dry
run, ``POST /v1/fine_tuning/jobs/dry_run`` (``fine_tuning.job.estimate``).

The training options of a request (OpenAI's hyperparameters, ``tunery.training``) are the training plan's request:
their one home is :mod:`tunery.plan` (``Hyperparameters``, ``DPOHyperparameters``, ``TrainingOptions``,
``LoraOptions``), reused here as they are. They forbid unknown fields as a :class:`TuneryExtension` does, so a
mistyped option is a 400; they cannot extend it, because tunery/ never imports api/.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from api.protocol.base import CursorPage, Name, OpenAIObject, OpenAIRequest, OpenAIResponse, TuneryExtension, omitted
from tunery.estimate import Estimate
from tunery.evalreport import EvalOptions, ReportSummary
from tunery.graders import Grader
from tunery.integrations import MAX_INTEGRATIONS, MAX_NAME_LENGTH, MAX_TAG_LENGTH, MAX_TAGS, MAX_URI_LENGTH
from tunery.jobstate import JobStatus
from tunery.methods import PreferenceTrainer
from tunery.plan import (
    Auto,
    DPOHyperparameters,
    Hyperparameters,
    ReasoningEffort,
    ReinforcementHyperparameters,
    ReinforcementOptions,
    TrainingOptions,
)

MethodType = Literal["supervised", "dpo", "reinforcement"]


# ---- requests ----------------------------------------------------------------------------------------------------
class FineTuneSupervisedMethod(OpenAIObject):
    hyperparameters: Hyperparameters | None = None


class FineTuneDPOMethod(OpenAIObject):
    hyperparameters: DPOHyperparameters | None = None


class FineTuneReinforcementMethod(OpenAIObject):
    """OpenAI's ``FineTuneReinforcementMethod``: the grader (OpenAI's grader object, checked by
    :func:`tunery.graders.parse_grader` so its errors name the field) and the hyperparameters."""

    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None
    response_format: dict[str, Any] | None = None  # structured outputs of the sampled answers: refused when set


class FineTuneMethod(OpenAIObject):
    """OpenAI's ``FineTuneMethod``: the type, and the section of that type."""

    type: MethodType
    supervised: FineTuneSupervisedMethod | None = None
    dpo: FineTuneDPOMethod | None = None
    reinforcement: FineTuneReinforcementMethod | None = None


class MixOptions(TuneryExtension):
    """``tunery.data.mix``: a fraction of the training set drawn from a general-purpose file (docs/data-options.md)."""

    file: Name
    fraction: float = Field(gt=0, le=0.5)


class DataQualityOptions(TuneryExtension):
    """``tunery.data`` (docs/data-options.md)."""

    drop_duplicates: bool = False
    long_examples: Literal["truncate", "drop"] = "truncate"
    mix: MixOptions | None = None


class MethodOptions(TuneryExtension):
    """``tunery.method``: which TRL preference trainer a ``dpo`` job runs (docs/methods.md)."""

    trainer: PreferenceTrainer = "dpo"


MIN_PRIORITY, MAX_PRIORITY = -100, 100


class SchedulingOptions(TuneryExtension):
    """``tunery.scheduling``: the job's rank among its own project's queued jobs (docs/tenancy.md, "Quotas and fair
    scheduling"). Higher launches first; it never moves a job ahead of another project's (the queue is fair between
    projects)."""

    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY)


class TuneryExtensions(TuneryExtension):
    """Tunery's documented extensions, under the one namespaced field ``tunery`` (docs/data-options.md,
    docs/hyperparameters.md)."""

    data: DataQualityOptions = Field(default_factory=DataQualityOptions)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    method: MethodOptions | None = None
    scheduling: SchedulingOptions | None = None
    eval: EvalOptions | None = None
    reinforcement: ReinforcementOptions | None = None


TrackerName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH)]


class WandbOptions(OpenAIObject):
    """OpenAI's W&B settings of an integration: the run's project, display name (default: the job's id), entity
    (default: the API key's) and tags (Tunery adds ``tunery/finetune``, ``tunery/{base model}``, ``tunery/{job}``)."""

    project: TrackerName
    name: TrackerName | None = None
    entity: TrackerName | None = None
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)


class MlflowOptions(TuneryExtension):
    """Tunery's MLflow settings of an integration: the tracking server's URI, the experiment (default: MLflow's
    ``Default``) and the run's name (default: the job's id)."""

    tracking_uri: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI_LENGTH)]
    experiment_name: TrackerName | None = None
    run_name: TrackerName | None = None


class IntegrationRequest(OpenAIObject):
    """One of a job request's ``integrations``: OpenAI's ``{"type": "wandb", "wandb": {...}}``, or Tunery's
    ``{"type": "mlflow", "mlflow": {...}}`` (checked by :func:`api.services.prepare.check_integrations`)."""

    type: str
    wandb: WandbOptions | None = None
    mlflow: MlflowOptions | None = None


class CreateJob(OpenAIRequest):
    """OpenAI's ``CreateFineTuningJobRequest`` and Tunery's ``tunery``: the body of job creation and of the dry run."""

    model: Name
    training_file: Name
    validation_file: Name | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated: method's hyperparameters win.")
    method: FineTuneMethod | None = None
    integrations: list[IntegrationRequest] | None = Field(default=None, max_length=MAX_INTEGRATIONS)
    tunery: TuneryExtensions | None = None


class ListJobsRequest(OpenAIRequest):
    """``GET /fine_tuning/jobs``'s query: ``metadata`` keeps the jobs whose metadata has every pair given."""

    after: str | None = None
    limit: int = Field(20, ge=1)
    metadata: dict[str, str] | None = None


class ListJobEventsRequest(OpenAIRequest):
    """``GET /fine_tuning/jobs/{id}/events``'s query."""

    after: str | None = None
    limit: int = Field(20, ge=1)


class ListJobCheckpointsRequest(OpenAIRequest):
    """``GET /fine_tuning/jobs/{id}/checkpoints``'s query."""

    after: str | None = None
    limit: int = Field(10, ge=1)


# ---- responses ---------------------------------------------------------------------------------------------------
class FineTuningJobError(OpenAIResponse):
    """``FineTuningJob.error``: why a failed job failed (a registered code: tunery.jobstate.ErrorCode)."""

    code: str
    message: str
    param: str | None


class JobHyperparameters(OpenAIResponse):
    """OpenAI's supervised hyperparameters as a job answers them: ``auto`` until its files are validated, then the
    values it trains with."""

    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"
    n_epochs: Auto | int = "auto"


class JobDPOHyperparameters(JobHyperparameters):
    beta: Auto | float = "auto"


class JobSupervisedMethod(OpenAIResponse):
    hyperparameters: JobHyperparameters


class JobDPOMethod(OpenAIResponse):
    hyperparameters: JobDPOHyperparameters


class JobReinforcementHyperparameters(JobHyperparameters):
    eval_interval: Auto | int = "auto"
    eval_samples: Auto | int = "auto"
    compute_multiplier: Auto | float = "auto"
    reasoning_effort: ReasoningEffort = "default"


class JobReinforcementMethod(OpenAIResponse):
    grader: Grader  # as the job asked for it (checked by tunery.graders.parse_grader when it was created)
    hyperparameters: JobReinforcementHyperparameters
    response_format: dict[str, Any] | None = None


class JobMethod(OpenAIResponse):
    """``FineTuningJob.method``: the type and its section, the only one sent."""

    type: MethodType
    supervised: JobSupervisedMethod | None = omitted()
    dpo: JobDPOMethod | None = omitted()
    reinforcement: JobReinforcementMethod | None = omitted()


class WandbIntegration(OpenAIResponse):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    run_id: str = Field(description="The W&B run's id: the job's id (as OpenAI's echo of the integration has it).")


class WandbJobIntegration(OpenAIResponse):
    """OpenAI's ``FineTuningIntegration``: the job's W&B run (docs/integrations.md)."""

    type: Literal["wandb"] = "wandb"
    wandb: WandbIntegration


class MlflowIntegration(OpenAIResponse):
    tracking_uri: str
    experiment_name: str | None = None
    run_name: str | None = None


class MlflowJobIntegration(OpenAIResponse):
    """Tunery's MLflow integration: the job's run on an MLflow tracking server (docs/integrations.md)."""

    type: Literal["mlflow"] = "mlflow"
    mlflow: MlflowIntegration


JobIntegration = Annotated[WandbJobIntegration | MlflowJobIntegration, Field(discriminator="type")]


class JobScheduling(OpenAIResponse):
    """A job's ``tunery.scheduling``: its priority within its project, and its place in the fair queue."""

    priority: int
    queue_position: int | None = Field(
        description="While the job is queued: its place in the order the scheduler considers queued jobs in, across "
        "every project (1: the next one); null otherwise."
    )


class JobTunery(OpenAIResponse):
    """A job's ``tunery`` object: its extensions with defaults filled in; ``training`` as requested, then as
    resolved once the job's files are validated (docs/hyperparameters.md); ``method`` on a preference job;
    ``scheduling``, its priority and queue position."""

    data: DataQualityOptions
    training: TrainingOptions | None = omitted("Absent on jobs created before tunery.training existed.")
    method: MethodOptions | None = omitted("The preference trainer of a dpo job.")
    reinforcement: ReinforcementOptions | None = omitted(
        "A reinforcement job's GRPO settings, as requested, then as resolved (docs/reinforcement.md)."
    )
    scheduling: JobScheduling
    eval: EvalOptions | None = omitted("The eval report options the job asked for (docs/evals.md).")
    eval_report: ReportSummary | None = omitted(
        "The final model's eval report, once written: its file and figures (the whole report: "
        "GET /v1/fine_tuning/jobs/{id}/eval_report)."
    )


class FineTuningJob(OpenAIResponse):
    """OpenAI's ``FineTuningJob``. ``status`` may also be ``paused`` (OpenAI's pause example answers it; its enum
    omits it); ``tunery`` is sent only to a job created with ``tunery`` in its body, so a plain job has OpenAI's
    fields alone."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningJobError | None
    fine_tuned_model: str | None = Field(description="The model's name, once the job has succeeded.")
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[JobIntegration]
    estimated_finish: int | None
    method: JobMethod
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    tunery: JobTunery | None = omitted("Tunery's extensions, on a job that asked for them.")


class ListPaginatedFineTuningJobsResponse(CursorPage[FineTuningJob]):
    """OpenAI's ``ListPaginatedFineTuningJobsResponse``: newest first."""


class FineTuningJobEvent(OpenAIResponse):
    """OpenAI's ``FineTuningJobEvent``: ``data`` holds a metrics event's figures (``step``, ``train_loss``, ...)."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


class ListFineTuningJobEventsResponse(CursorPage[FineTuningJobEvent]):
    """OpenAI's ``ListFineTuningJobEventsResponse``: newest first."""


class CheckpointMetrics(OpenAIResponse):
    """``FineTuningJobCheckpoint.metrics``: the figures the trainer reported at the checkpoint's step (those it did
    not measure are left out; any beyond OpenAI's pass through)."""

    model_config = ConfigDict(extra="allow")

    step: int | None = omitted()
    train_loss: float | None = omitted()
    train_mean_token_accuracy: float | None = omitted()
    valid_loss: float | None = omitted()
    valid_mean_token_accuracy: float | None = omitted()
    full_valid_loss: float | None = omitted()
    full_valid_mean_token_accuracy: float | None = omitted()


class CheckpointTunery(OpenAIResponse):
    best: bool = Field(description="The checkpoint with the run's lowest validation loss (docs/adapters.md).")
    eval_report: ReportSummary | None = omitted(
        "The checkpoint's eval report: its file and figures (the whole report: "
        "GET /v1/fine_tuning/jobs/{id}/checkpoints/{checkpoint id}/eval_report)."
    )


class FineTuningJobCheckpoint(OpenAIResponse):
    """OpenAI's ``FineTuningJobCheckpoint``; listed with Tunery's ``tunery.best``."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics
    tunery: CheckpointTunery | None = omitted()


class ListFineTuningJobCheckpointsResponse(CursorPage[FineTuningJobCheckpoint]):
    """OpenAI's ``ListFineTuningJobCheckpointsResponse``: newest first."""


class FineTuningJobEstimate(OpenAIResponse, Estimate):
    """Tunery's ``fine_tuning.job.estimate``: what a job would cost, from the training file's tokens with the job's
    model and chat template, its resolved plan and the trainer's GPU (docs/estimates.md); the figures are
    :class:`tunery.estimate.Estimate`'s."""

    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"
    model: str
    training_file: str
    hyperparameters: JobHyperparameters
    estimated_finish: int
