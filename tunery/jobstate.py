"""The job state machine: a fine-tuning job's statuses, its typed error, and the transitions between them.

The functions here are the only writers of a job's ``status``, ``error``, ``finished_at``, ``pause_requested`` and
``cancel_requested`` (tests/test_architecture.py checks it). Each transition checks its move against
``TRANSITIONS`` and raises ``IllegalTransition`` otherwise. They change the job object only: the caller's
transaction writes it, and the caller adds the job's events. A fine-tuning job's move to succeeded, failed or
cancelled also writes its webhook deliveries, in that same transaction: tunery/webhooks.py's outbox, which every
session of the metadata store runs at its flush.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunery.db.models import Job


class JobStatus(enum.StrEnum):
    """OpenAI's job statuses, plus Tunery's ``paused``. Stored as the plain string."""

    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
# The statuses in which a job belongs to one scheduler replica: its files are being checked, or its run is going.
OWNED = frozenset({JobStatus.validating_files, JobStatus.running})
# The statuses of a job that has not started training yet.
WAITING = frozenset({JobStatus.validating_files, JobStatus.queued})


class JobKind(enum.StrEnum):
    """What a job's trainer run does (the ``kind`` column; docs/evals.md). Every kind goes through the same statuses,
    queue, claims, run lifecycle and reporting channel; each is its own resource at the API, so a fine-tuning job
    list (OpenAI's) shows fine-tuning jobs only:

    * ``fine_tune``: ``/v1/fine_tuning/jobs``, the trainer trains (trainer/run.py);
    * ``evaluation``: ``/v1/tunery/evaluations``, the trainer writes one eval report of an existing ``ft:`` model
      against a file (trainer/evaluate.py);
    * ``export``: ``/v1/tunery/exports``, the trainer merges an existing ``ft:`` model into its base and stores it as
      one downloadable file, a safetensors folder's archive or a GGUF (trainer/export_task.py, docs/exports.md).
    """

    fine_tune = "fine_tune"
    evaluation = "evaluation"
    export = "export"


class Transition(enum.StrEnum):
    """The moves of a job, one function each below."""

    queue = "queue"  # its files are valid
    start = "start"  # a run was launched
    succeed = "succeed"  # the run reported success
    fail = "fail"  # validation, launch or the run failed
    cancel = "cancel"  # the user cancelled it
    pause = "pause"  # the user paused it
    resume = "resume"  # the user resumed it
    requeue = "requeue"  # the run crashed, was preempted, or its scheduler stopped: run it again


_S = JobStatus
_ACTIVE = (_S.validating_files, _S.queued, _S.running, _S.paused)

# Every allowed (from, to) move and the one transition that makes it; any other move is illegal.
TRANSITIONS: dict[tuple[JobStatus, JobStatus], Transition] = {
    (_S.validating_files, _S.queued): Transition.queue,
    (_S.queued, _S.running): Transition.start,
    (_S.running, _S.queued): Transition.requeue,
    (_S.running, _S.paused): Transition.pause,
    (_S.paused, _S.queued): Transition.resume,
    (_S.running, _S.succeeded): Transition.succeed,
    # A run that finished its last step before it saw the pause; or that finished after the job was resumed while
    # it was still saving its state (the job waits queued for that run to end).
    (_S.paused, _S.succeeded): Transition.succeed,
    (_S.queued, _S.succeeded): Transition.succeed,
    **{(s, _S.failed): Transition.fail for s in _ACTIVE},
    **{(s, _S.cancelled): Transition.cancel for s in _ACTIVE},
}

# The status each transition leads to.
TARGET: dict[Transition, JobStatus] = {t: to for (_, to), t in TRANSITIONS.items()}


class IllegalTransition(Exception):
    """A transition the job's current status does not allow."""

    def __init__(self, job_id: str | None, current: str | None, target: JobStatus, transition: Transition):
        super().__init__(f"job {job_id}: {transition} ({current} -> {target}) is not allowed")
        self.job_id = job_id
        self.current = current
        self.target = target
        self.transition = transition


class ErrorCode(enum.StrEnum):
    """The registered codes of a job's ``error``."""

    training_error = "training_error"  # the run failed (the trainer's default)
    server_error = "server_error"  # Tunery failed: validation crashed, the trainer could not start
    invalid_training_file = "invalid_training_file"
    invalid_validation_file = "invalid_validation_file"
    invalid_mix_file = "invalid_mix_file"  # tunery.data.mix.file
    invalid_n_examples = "invalid_n_examples"
    invalid_hyperparameters = "invalid_hyperparameters"  # refused by the trainer
    model_not_available = "model_not_available"  # the trainer cannot load the base model
    quota_exceeded = "quota_exceeded"
    unservable_adapter = "unservable_adapter"  # vLLM could not load the result (docs/serving.md)
    unsupported_hardware = "unsupported_hardware"  # the adapter or precision does not fit the trainer's hardware
    unsupported_cluster = "unsupported_cluster"  # Kubernetes cannot run the job
    eval_gate_failed = "eval_gate_failed"  # no model of the job passed its eval gate (tunery.eval.gate)
    invalid_reference_file = "invalid_reference_file"  # tunery.eval.reference_file
    unsupported_method = "unsupported_method"  # the method does not support an option of the job (tunery.methods)
    # A model export (trainer/export.py, an export job's run): a checkpoint that cannot be merged, an architecture GGUF
    # cannot express.
    export_error = "export_error"
    unsupported_architecture = "unsupported_architecture"
    invalid_file = "invalid_file"  # an evaluation's file (``file``): not chat or preference examples
    out_of_memory = "out_of_memory"  # the run ran out of GPU memory (trainer/errors.py says what to change)


# The request parameter that names the general-purpose file mixed into the training set (docs/data-options.md).
MIX_PARAM = "tunery.data.mix.file"
# The request parameter that names the job's own forgetting reference set (docs/evals.md): chat examples.
REFERENCE_PARAM = "tunery.eval.reference_file"
# The request parameter that names the file an evaluation scores (docs/evals.md): chat or preference examples.
EVAL_FILE_PARAM = "file"
# The request parameter of the grader an evaluation is given (docs/evals.md), instead of its model's job's.
EVAL_GRADER_PARAM = "grader"
# The inputs that are chat examples whatever the job's method.
CHAT_PARAMS = frozenset({MIX_PARAM, REFERENCE_PARAM})


def file_error_code(param: str) -> ErrorCode:
    """The job error code for a problem with the file given as ``param`` (``training_file``, ``validation_file`` or
    :data:`MIX_PARAM`), for the scheduler's validation and the trainer alike."""
    return {
        "training_file": ErrorCode.invalid_training_file,
        MIX_PARAM: ErrorCode.invalid_mix_file,
        REFERENCE_PARAM: ErrorCode.invalid_reference_file,
        EVAL_FILE_PARAM: ErrorCode.invalid_file,
    }.get(param, ErrorCode.invalid_validation_file)


def failure_event(error: JobError, kind: str = JobKind.fine_tune) -> str:
    """The message of the event a failed job gets (OpenAI's wording for a fine-tuning job), whoever fails it."""
    what = {JobKind.evaluation: "Evaluation", JobKind.export: "Export"}.get(JobKind(kind), "Fine-tuning job")
    return f"{what} failed: {error.message}"


class UnknownErrorCode(ValueError):
    """A job error code that is not in ``ErrorCode``."""


def error_code(value: str) -> ErrorCode:
    """The registered code named ``value``; raises UnknownErrorCode for any other."""
    try:
        return ErrorCode(value)
    except ValueError:
        raise UnknownErrorCode(f"unregistered job error code {value!r}") from None


@dataclass(frozen=True)
class JobError:
    """OpenAI's job ``error`` object: a registered code, a message, and the request field it is about."""

    code: ErrorCode
    message: str
    param: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", error_code(self.code))

    def to_json(self) -> dict[str, str | None]:
        """The value of the ``Job.error`` JSON column."""
        return {"code": self.code.value, "message": self.message, "param": self.param}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobError:
        return cls(error_code(data["code"]), data["message"], data.get("param"))


def allowed(job: Job, transition: Transition) -> bool:
    """Whether ``transition`` may be made from the job's current status."""
    try:
        current = JobStatus(job.status)
    except ValueError:  # None (a new job) or not a status at all
        return False
    return TRANSITIONS.get((current, TARGET[transition])) is transition


def _move(job: Job, transition: Transition) -> None:
    if not allowed(job, transition):
        raise IllegalTransition(job.id, job.status, TARGET[transition], transition)
    job.status = TARGET[transition].value


def create(job: Job) -> None:
    """A new job: its files are to be validated; no error, no flags."""
    job.status = JobStatus.validating_files.value
    job.error = None
    job.finished_at = None
    job.cancel_requested = False
    job.pause_requested = False


def queue(job: Job) -> None:
    """The job's files are valid: it waits for a run."""
    _move(job, Transition.queue)


def start(job: Job, at: int) -> None:
    """A run of the job was launched at ``at``."""
    _move(job, Transition.start)
    job.started_at = at


def succeed(job: Job, at: int) -> None:
    """The run reported success at ``at``."""
    _move(job, Transition.succeed)
    job.finished_at = at
    job.estimated_finish = None


def fail(job: Job, error: JobError, at: int) -> None:
    """The job failed at ``at`` with ``error``."""
    _move(job, Transition.fail)
    job.error = error.to_json()
    job.finished_at = at
    job.estimated_finish = None


def cancel(job: Job, at: int) -> None:
    """The user cancelled the job at ``at``; its run (if any) is told to stop."""
    _move(job, Transition.cancel)
    job.cancel_requested = True
    job.finished_at = at
    job.estimated_finish = None


def pause(job: Job) -> None:
    """The user paused the running job: its run saves its state at the next step boundary and stops."""
    _move(job, Transition.pause)
    job.pause_requested = True
    job.estimated_finish = None


def resume(job: Job) -> None:
    """The user resumed the paused job: it is queued to continue from its last checkpoint. A run still saving its
    state keeps the pause flag until the scheduler reaps it (``pause_done``); the job is launched only after that."""
    _move(job, Transition.resume)
    if job.run_handle is None:  # the paused run is over, or never got a handle (a stale token stops it)
        pause_done(job)


def requeue(job: Job) -> None:
    """The running job is queued again (its run crashed, was preempted, or its scheduler stopped)."""
    _move(job, Transition.requeue)
    job.pause_requested = False


def pause_done(job: Job) -> None:
    """The run asked to pause is over: the flag is lowered and the run's token is void. The status stays."""
    job.pause_requested = False
    job.run_token = None
