"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request, not_found
from api.files import get_file
from api.objects import best_checkpoint_step, checkpoint_object, event_object, job_object
from api.pagination import limit_param, list_object, page
from tunery import ids, jobstate
from tunery.db import Checkpoint, FineTunedModel, Job, JobEvent
from tunery.db.ops import add_event, now
from tunery.methods import PreferenceTrainer
from tunery.plan import DPOHyperparameters, Hyperparameters, PlanRequest, TrainingOptions, check_request

router = APIRouter()


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DPOMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DPOHyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DPOMethod | None = None
    reinforcement: dict[str, Any] | None = None


class MixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(min_length=1)
    fraction: float = Field(gt=0, le=0.5)


class DataQualityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drop_duplicates: bool = False
    long_examples: Literal["truncate", "drop"] = "truncate"
    mix: MixOptions | None = None


class MethodOptions(BaseModel):
    """``tunery.method``: which TRL preference trainer a ``dpo`` job runs (docs/methods.md)."""

    model_config = ConfigDict(extra="forbid")
    trainer: PreferenceTrainer = "dpo"


class TuneryExtensions(BaseModel):
    """Tunery's documented extensions, under the one namespaced field ``tunery`` (docs/data-options.md,
    docs/hyperparameters.md)."""

    model_config = ConfigDict(extra="forbid")
    data: DataQualityOptions = Field(default_factory=DataQualityOptions)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    method: MethodOptions | None = None


class CreateJob(BaseModel):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2147483647)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    tunery: TuneryExtensions | None = None


def _check_metadata(md: dict[str, str] | None) -> None:
    if md is None:
        return
    if len(md) > 16:
        raise bad_request("metadata can have at most 16 keys.", param="metadata")
    for k, v in md.items():
        if len(k) > 64:
            raise bad_request(f"metadata key {k[:20]!r}... is longer than 64 characters.", param="metadata")
        if len(v) > 512:
            raise bad_request(f"metadata value for {k!r} is longer than 512 characters.", param="metadata")


def _method_hyperparameters(body: CreateJob) -> Hyperparameters | None:
    method = body.method
    if method and method.supervised and method.supervised.hyperparameters:
        return method.supervised.hyperparameters
    if method and method.dpo and method.dpo.hyperparameters:
        return method.dpo.hyperparameters
    return None


def plan_request(body: CreateJob) -> PlanRequest:
    """The training plan the body asks for (``auto`` where it leaves a choice), after the checks of its shape: the
    method's hyperparameters win over the deprecated top-level ones; a ``reinforcement`` job is refused."""
    method_type = body.method.type if body.method else "supervised"
    trainer = body.tunery.method.trainer if body.tunery and body.tunery.method else None
    if method_type == "reinforcement":
        raise bad_request(
            "Fine-tuning method 'reinforcement' is not supported; use 'supervised' or 'dpo'.",
            param="method.type",
            code="unsupported_method",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if body.method and other != method_type and getattr(body.method, other) is not None:
            raise bad_request(
                f"method.{other} is given, but method.type is {method_type!r}: give the section of that method.",
                param=f"method.{other}",
                code="invalid_method",
            )
    if trainer is not None and method_type != "dpo":
        raise bad_request(
            f"tunery.method.trainer selects a preference trainer, so it needs method.type 'dpo' (got {method_type!r}).",
            param="tunery.method.trainer",
            code="invalid_method",
        )
    chosen = _method_hyperparameters(body) or body.hyperparameters or Hyperparameters()
    return PlanRequest(
        method=(trainer or "dpo") if method_type == "dpo" else "supervised",
        hyperparameters=DPOHyperparameters(**chosen.model_dump()),
        training=body.tunery.training if body.tunery else TrainingOptions(),
    )


def _extensions(body: CreateJob, request: PlanRequest) -> dict[str, Any]:
    """What the job stores under ``extensions``: ``tunery.training`` always (resolved when the files are
    validated), ``tunery.data`` when the request has ``tunery`` (its presence is how ``job_object`` knows the job
    asked for its extensions: only then does the job object carry ``tunery``), ``tunery.method`` for a dpo job."""
    out: dict[str, Any] = {"training": request.training.model_dump()}
    if body.tunery is not None:
        out = {"data": body.tunery.data.model_dump(), **out}
    if request.method != "supervised":
        out["method"] = {"trainer": request.method}
    return {"tunery": out}


def get_job(s: Session, t: Tenant, job_id: str) -> Job:
    job = s.scalar(
        select(Job).where(Job.id == job_id, Job.organization_id == t.organization_id, Job.project_id == t.project_id)
    )
    if job is None:
        raise not_found(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return job


def _check_file(s: Session, t: Tenant, file_id: str, param: str) -> None:
    try:
        f = get_file(s, t, file_id)
    except APIError:
        raise bad_request(f"Invalid file ID: {file_id}. No such file.", param=param, code="invalid_file_id") from None
    if f.purpose != "fine-tune":
        raise bad_request(
            f"File {file_id} has purpose {f.purpose!r}; fine-tuning needs a file uploaded with purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )


def _parent_base_model(s: Session, t: Tenant, body: CreateJob, base_models: dict[str, str]) -> str:
    """The base model of a job whose ``model`` is a fine-tuned model (``ft:...`` or ``ft:...:ckpt-step-N``): training
    continues from that model's adapter, on its base model (docs/adapters.md)."""
    row = s.scalar(
        select(FineTunedModel).where(
            FineTunedModel.id == body.model,
            FineTunedModel.organization_id == t.organization_id,
            FineTunedModel.project_id == t.project_id,
        )
    )
    if row is None or row.base_model not in base_models:
        raise bad_request(
            f"Model {body.model!r} does not exist or you do not have access to it.",
            param="model",
            code="model_not_available",
        )
    parent = s.scalar(select(Job).where(Job.id == row.job_id))
    parent_training = ((parent.extensions or {}).get("tunery") or {}).get("training") or {} if parent else {}
    if parent_training.get("adapter") == "full":
        raise bad_request(
            f"Model {body.model!r} was fully fine-tuned; only LoRA and QLoRA models can be fine-tuned further.",
            param="model",
            code="model_not_available",
        )
    adapter = body.tunery.training.adapter if body.tunery else "lora"
    if adapter == "full":
        raise bad_request(
            f"Model {body.model!r} is a LoRA adapter: fine-tuning it continues that adapter, so the adapter must be "
            "'lora' or 'qlora', not 'full'.",
            param="tunery.training.adapter",
        )
    return row.base_model


@dataclass
class PreparedJob:
    """A job request that passed every check job creation and the dry run share."""

    body: CreateJob
    base_model: str  # the model's, or for an ft: model its base model's
    request: PlanRequest


def prepare_job(s: Session, ctx: AppContext, t: Tenant, body: CreateJob) -> PreparedJob:
    """The checks of ``POST /v1/fine_tuning/jobs`` and of its dry run, in one place: the model (a base model or one
    of the tenant's ``ft:`` models), the plan request and what its method supports, the files."""
    base_models = ctx.settings.base_model_paths()
    if body.model not in base_models and not body.model.startswith("ft:"):
        available = ", ".join(base_models) or "none configured"
        raise bad_request(
            f"Model {body.model!r} is not available for fine-tuning. Available base models: {available}, or one of "
            "your fine-tuned models (ft:...).",
            param="model",
            code="model_not_available",
        )
    if body.integrations:
        raise bad_request("Integrations are not supported yet.", param="integrations", code="unsupported_integration")
    _check_metadata(body.metadata)
    request = plan_request(body)
    mix = body.tunery.data.mix if body.tunery else None
    problem = check_request(
        request,
        has_validation=bool(body.validation_file),
        continuing=body.model not in base_models,
        data_mix=mix is not None,
        explicit=frozenset(body.tunery.training.model_fields_set) if body.tunery else frozenset(),
    )
    if problem is not None:
        raise bad_request(problem.message, param=problem.param, code=problem.code)
    base_model = body.model if body.model in base_models else _parent_base_model(s, t, body, base_models)
    _check_file(s, t, body.training_file, "training_file")
    if body.validation_file:
        _check_file(s, t, body.validation_file, "validation_file")
    if mix is not None:
        _check_file(s, t, mix.file, "tunery.data.mix.file")
    return PreparedJob(body, base_model, request)


@router.post("/fine_tuning/jobs")
def create_job(body: CreateJob, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    with ctx.db.session() as s:
        prepared = prepare_job(s, ctx, t, body)
        request = prepared.request
        job = Job(
            id=ids.job_id(),
            organization_id=t.organization_id,
            project_id=t.project_id,
            created_at=now(),
            model=body.model,
            base_model=prepared.base_model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=seed,
            job_metadata=body.metadata,
            method=request.openai_method(),
            hyperparameters=request.openai_hyperparameters(),
            integrations=[],
            extensions=_extensions(body, request),
            result_files=[],
            attempts=0,
        )
        jobstate.create(job)
        s.add(job)
        s.flush()
        add_event(s, job.id, f"Created fine-tuning job: {job.id}")
        files = f"Validating training file: {body.training_file}"
        if body.validation_file:
            files += f" and validation file: {body.validation_file}"
        add_event(s, job.id, files)
        out = job_object(job)
    ctx.wake_scheduler()
    return out


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = limit_param(20),
    ctx: AppContext = Depends(get_ctx),
    t: Tenant = Depends(tenant),
) -> dict:
    # metadata[k]=v filters (the SDK's deepObject encoding); all must match.
    wanted = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.multi_items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    with ctx.db.session() as s:
        q = select(Job).where(Job.organization_id == t.organization_id, Job.project_id == t.project_id)
        if not wanted:
            rows, more = page(s, Job, q, after=after, limit=limit)
            return list_object([job_object(j) for j in rows], more)
        # Metadata is JSON: filter in Python, page by page, so SQLite and PostgreSQL behave the same.
        matched: list[Job] = []
        cursor, more = after, True
        while more and len(matched) <= limit:
            rows, more = page(s, Job, q, after=cursor, limit=200)
            matched += [j for j in rows if all((j.job_metadata or {}).get(k) == v for k, v in wanted.items())]
            cursor = rows[-1].id if rows else None
        return list_object([job_object(j) for j in matched[:limit]], len(matched) > limit)


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    with ctx.db.session() as s:
        return job_object(get_job(s, t, job_id))


def change_job(ctx: AppContext, t: Tenant, job_id: str, change: Callable[[Session, Job], None]) -> dict:
    """Apply ``change`` (cancel, pause, resume) to one of the tenant's jobs in one transaction, wake the scheduler
    to act on it, and answer the job object."""

    def apply(s: Session) -> dict:
        job = get_job(s, t, job_id)
        change(s, job)
        return job_object(job)

    out = ctx.db.transaction(apply)
    ctx.wake_scheduler()
    return out


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    def cancel(s: Session, job: Job) -> None:
        try:
            jobstate.cancel(job, now())
        except jobstate.IllegalTransition:
            raise bad_request(
                f"Job {job_id} has already {'been cancelled' if job.status == 'cancelled' else job.status}.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            ) from None
        add_event(s, job.id, "Fine-tuning job cancelled")

    return change_job(ctx, t, job_id, cancel)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str,
    after: str | None = None,
    limit: int = limit_param(20),
    ctx: AppContext = Depends(get_ctx),
    t: Tenant = Depends(tenant),
) -> dict:
    with ctx.db.session() as s:
        get_job(s, t, job_id)
        rows, more = page(s, JobEvent, select(JobEvent).where(JobEvent.job_id == job_id), after=after, limit=limit)
        return list_object([event_object(e) for e in rows], more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = limit_param(10),
    ctx: AppContext = Depends(get_ctx),
    t: Tenant = Depends(tenant),
) -> dict:
    with ctx.db.session() as s:
        get_job(s, t, job_id)
        # A checkpoint is listed while its model is: DELETE /v1/models/{ft:...:ckpt-step-N} deletes the model row
        # (the checkpoint's row stays, as the job's record; so do its objects).
        servable = select(FineTunedModel.id).where(FineTunedModel.id == Checkpoint.fine_tuned_model_checkpoint)
        made = select(Checkpoint).where(Checkpoint.job_id == job_id)
        rows, more = page(s, Checkpoint, made.where(servable.exists()), after=after, limit=limit, cursors=made)
        # The best checkpoint is the run's, among all it made: a deleted best leaves no other one marked.
        all_metrics = s.execute(
            select(Checkpoint.step_number, Checkpoint.metrics).where(Checkpoint.job_id == job_id)
        ).all()
        best = best_checkpoint_step([(step, metrics) for step, metrics in all_metrics])
        objects = [checkpoint_object(c, None if best is None else c.step_number == best) for c in rows]
        return list_object(objects, more)
