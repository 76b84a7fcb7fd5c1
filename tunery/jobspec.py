"""The JobSpec: everything a trainer run needs, written by the scheduler to the object store.

The trainer gets only a reference to it (``python -m trainer --spec <object-store-url>#<key>`` or a local
path), so the same trainer runs as a local process, a Kubernetes pod or a pod on another cluster.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tunery import layout
from tunery.evalreport import EvalOptions
from tunery.exports import ExportOptions
from tunery.integrations import IntegrationsSpec
from tunery.jobstate import JobKind
from tunery.plan import TrainingPlan
from tunery.settings import Generation

# A local trainer's parent: the server that launched it (scheduler/backends.py sets it, trainer/orphan.py reads it).
PARENT_PID_ENV = "TUNERY_PARENT_PID"
# The run's token, the trainer's credential on the reporting channel: the backend hands it to that trainer alone (a
# local process's environment, a per-run Kubernetes Secret), never through the shared object store (docs/security.md).
RUN_TOKEN_ENV = "TUNERY_RUN_TOKEN"
# A brokered trainer's object store (docs/security.md): ``tunery-broker://<reporting address>/<job id>``. It holds no
# store credentials; it asks the scheduler at that address, with its run token, for presigned URLs of its objects.
BROKER_SCHEME = "tunery-broker"


def broker_url(address: str, job_id: str) -> str:
    return f"{BROKER_SCHEME}://{address}/{job_id}"


def parse_broker_url(url: str) -> tuple[str, str] | None:
    """(reporting address, job id) of a broker URL; None for any other store URL."""
    head = f"{BROKER_SCHEME}://"
    if not url.startswith(head):
        return None
    address, _, job_id = url[len(head) :].partition("/")
    if not address or not job_id or "/" in job_id:
        raise ValueError(f"not a broker URL: {url!r} (expected {head}<host:port>/<job id>)")
    return address, job_id


class DataFile(BaseModel):
    file_id: str
    key: str  # object-store key
    sha256: str | None = None


class MixSpec(BaseModel):
    """A general-purpose dataset mixed into the training set (against catastrophic forgetting)."""

    file: DataFile
    fraction: float = Field(gt=0, le=0.5)  # of the final training set


def mix_count(n_train: int, fraction: float) -> int:
    """How many examples to mix into ``n_train`` so that they make up ``fraction`` of the final set."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    return round(n_train * fraction / (1 - fraction))


class JudgeSpec(BaseModel):
    """The judge model of a score_model grader, as the trainer loads it (trainer/judge.py): resolved by the scheduler
    for the job's project when it launches the run (tunery/sharing.py), so the trainer never looks a model up by
    name."""

    model: str  # the name the grader gives (a base model, an ft: model, an alias)
    base_model: str
    base_model_path: str  # local folder of its base model
    adapter_prefix: str | None = None  # an ft: model's files in the object store (a LoRA adapter, or a whole model)


class EmbeddingSpec(BaseModel):
    """The embedding model of a grader's cosine metric (``TUNERY_EMBEDDING_MODEL``), as the trainer loads it
    (trainer/judge.py): resolved by the scheduler when it launches the run, a local folder like a base model's."""

    model: str  # a base model's name, or the folder's path as configured
    path: str  # local folder with a safetensors model and its tokenizer


class DataOptions(BaseModel):
    """Data quality options of the job (``tunery.data`` on the job; see docs/data-options.md)."""

    drop_duplicates: bool = False
    long_examples: Literal["truncate", "drop"] = "truncate"
    mix: MixSpec | None = None


class JobSpec(BaseModel):
    """One run of a job of any kind (``task``; tunery.jobstate.JobKind). A ``fine_tune`` run trains; an
    ``evaluation`` run (trainer/evaluate.py) writes one eval report of the model ``fine_tuned_model`` (whose files
    are under ``init_adapter_prefix``) against ``training_file``, the base model as its baseline, with ``eval``'s
    options and ``plan`` the plan of the job that made the model (its max_seq_length, its method's beta). An
    ``export`` run (trainer/export_task.py) merges the model ``fine_tuned_model`` (its files under
    ``init_adapter_prefix``) into its base and stores it as ``export`` says; it reads no data file."""

    task: JobKind = JobKind.fine_tune
    job_id: str
    organization_id: str
    project_id: str
    base_model: str  # the name users see (e.g. smollm2-135m-instruct)
    base_model_path: str  # local folder with a safetensors model and tokenizer
    fine_tuned_model: str  # ft:... name this run produces

    training_file: DataFile | None = None  # a fine-tuning job's, an evaluation's file; None for an export
    validation_file: DataFile | None = None
    data: DataOptions | None = None
    # The eval reports (tunery.eval; docs/evals.md): None writes none. The reference set's file when the job named one.
    eval: EvalOptions | None = None
    eval_reference_file: DataFile | None = None
    plan: TrainingPlan  # the method and every training option, resolved (tunery/plan.py)
    seed: int
    device: str = "auto"  # auto | cpu | cuda
    generation: Generation = "auto"  # who samples a reinforcement run's answers (the trainer's setting)
    # Fine-tuning a fine-tuned model: the object-store prefix of the parent adapter (``model`` was an ft: model).
    init_adapter_prefix: str | None = None
    export: ExportOptions | None = None  # an export's format and precision
    # A reinforcement job's judge models (its score_model graders'), by the name each grader gives.
    judges: dict[str, JudgeSpec] = Field(default_factory=dict)
    # A reinforcement job's embedding model, when its grader has a cosine metric (text_similarity).
    embedding_model: EmbeddingSpec | None = None
    # The experiment trackers the run logs to (docs/integrations.md): their settings only; the secrets they read
    # (a W&B API key) are the trainer's environment, handed by its backend, never written here.
    integrations: IntegrationsSpec | None = None

    # URL of the object store as the trainer reaches it: file:///..., s3://bucket/prefix (with TUNERY_S3_* in the env),
    # or a broker URL (broker_url: no credentials, presigned URLs from the scheduler)
    object_store: str
    output_prefix: str  # jobs/<job_id>; checkpoints, final model and results go under it
    reporting_address: str  # host:port of the gRPC TrainerReporting service
    # Continue from a resume state (see tunery/resume.py): "latest" (the newest complete one, if any) or a state's
    # prefix; None starts from the beginning.
    resume_from: str | None = None

    def data_file(self) -> DataFile:
        """The file a fine-tuning run trains on, or an evaluation scores (an export reads none)."""
        if self.training_file is None:
            raise ValueError(f"a run of kind {self.task} has no data file")
        return self.training_file

    def spec_key(self) -> str:
        return layout.spec_key(self.output_prefix)
