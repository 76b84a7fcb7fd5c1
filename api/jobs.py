"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request, not_found
from api.files import get_file
from api.objects import checkpoint_object, event_object, job_object
from api.pagination import list_object, page
from tunery import ids
from tunery.db import Checkpoint, Job, JobEvent
from tunery.db.ops import TERMINAL, add_event, now

router = APIRouter()

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] | None = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] | None = "auto"
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] | None = "auto"


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: dict[str, Any] | None = None
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


class TuneryExtensions(BaseModel):
    """Tunery's documented extensions, under the one namespaced field ``tunery`` (docs/data-options.md)."""

    model_config = ConfigDict(extra="forbid")
    data: DataQualityOptions = Field(default_factory=DataQualityOptions)


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


def _hyperparameters(body: CreateJob) -> dict[str, Any]:
    """Method hyperparameters win over the deprecated top-level ones."""
    chosen = None
    if body.method and body.method.supervised and body.method.supervised.hyperparameters:
        chosen = body.method.supervised.hyperparameters
    elif body.hyperparameters:
        chosen = body.hyperparameters
    hp = (chosen or Hyperparameters()).model_dump()
    return {k: ("auto" if v is None else v) for k, v in hp.items()}


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


@router.post("/fine_tuning/jobs")
def create_job(body: CreateJob, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    base_models = ctx.settings.base_model_paths()
    if body.model not in base_models:
        available = ", ".join(base_models) or "none configured"
        raise bad_request(
            f"Model {body.model!r} is not available for fine-tuning. Available base models: {available}.",
            param="model",
            code="model_not_available",
        )
    method_type = body.method.type if body.method else "supervised"
    if method_type != "supervised":
        raise bad_request(
            f"Fine-tuning method {method_type!r} is not supported yet; use 'supervised'.",
            param="method.type",
            code="unsupported_method",
        )
    if body.integrations:
        raise bad_request("Integrations are not supported yet.", param="integrations", code="unsupported_integration")
    _check_metadata(body.metadata)
    hp = _hyperparameters(body)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    with ctx.db.session() as s:
        _check_file(s, t, body.training_file, "training_file")
        if body.validation_file:
            _check_file(s, t, body.validation_file, "validation_file")
        if body.tunery and body.tunery.data.mix:
            _check_file(s, t, body.tunery.data.mix.file, "tunery.data.mix.file")
        job = Job(
            id=ids.job_id(),
            organization_id=t.organization_id,
            project_id=t.project_id,
            created_at=now(),
            status="validating_files",
            model=body.model,
            base_model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=seed,
            job_metadata=body.metadata,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},
            hyperparameters=hp,
            integrations=[],
            extensions={"tunery": body.tunery.model_dump()} if body.tunery else None,
            error=None,
            result_files=[],
            attempts=0,
            cancel_requested=False,
        )
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
    limit: int = Query(20, ge=1, le=100),
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


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    def cancel(s: Session) -> dict:
        job = get_job(s, t, job_id)
        if job.status in TERMINAL:
            raise bad_request(
                f"Job {job_id} has already {'been cancelled' if job.status == 'cancelled' else job.status}.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        job.status = "cancelled"
        job.cancel_requested = True
        job.finished_at = now()
        job.estimated_finish = None
        add_event(s, job.id, "Fine-tuning job cancelled")
        return job_object(job)

    out = ctx.db.transaction(cancel)
    ctx.wake_scheduler()
    return out


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
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
    limit: int = Query(10, ge=1, le=100),
    ctx: AppContext = Depends(get_ctx),
    t: Tenant = Depends(tenant),
) -> dict:
    with ctx.db.session() as s:
        get_job(s, t, job_id)
        q = select(Checkpoint).where(Checkpoint.job_id == job_id)
        rows, more = page(s, Checkpoint, q, after=after, limit=limit)
        return list_object([checkpoint_object(c) for c in rows], more, with_ids=True)
