"""Merged-model exports (docs/exports.md): an existing ``ft:`` model or checkpoint model merged into its base and
stored as one downloadable file, as a short job of its own: create one, list, retrieve and cancel them.

As an evaluation (api/services/evaluations.py), an export is a job (kind ``export``, tunery.jobstate.JobKind) in the
jobs table, so the state machine, the fair queue, project quotas and claims, the trainer's launch on either backend,
its run token and reporting channel, cancellation and crash handling are the jobs'. Its run
(trainer/export_task.py) merges the model with trainer/export.py and stores the result under the export's own prefix;
the reporting service makes that object (at the server's key, never one the trainer names) a file of purpose
``fine-tune-results`` owned by the project: ``result_file``.

The checks, in the other routes' words: the model is one the project may use (its own, or shared with it; otherwise
the 404 of ``GET /v1/models/{model}``); a base model is refused (400 ``invalid_model``: there is nothing to merge);
``gguf_type`` goes with ``format: gguf`` only. A GGUF of a model that is not a Llama fails the export with
``unsupported_architecture`` (the trainer reads the model's config).
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, NotFound
from api.pagination import page
from api.protocol.exports import CreateExportRequest, Export, ExportList, ListExportsRequest
from api.protocol.jobs import FineTuningJobError
from api.services.jobs import NOT_SHOWN, owned
from api.services.models import model_to_read
from tunery import ids, jobstate
from tunery.audit import Actor, EventType, record
from tunery.db import Job
from tunery.db.ops import add_event, now
from tunery.exports import ExportOptions
from tunery.jobstate import JobKind, JobStatus


def export_object(j: Job) -> Export:
    options = ExportOptions.model_validate(j.tunery_options("export"))
    results = list(j.result_files or [])
    return Export(
        id=j.id,
        created_at=j.created_at,
        finished_at=j.finished_at,
        status=JobStatus(j.status),
        model=j.model,
        base_model=j.base_model,
        format=options.format,
        dtype=options.dtype,
        gguf_type=options.outtype() if options.format == "gguf" else None,
        error=FineTuningJobError.model_validate(j.error) if j.error is not None else None,
        result_file=results[0] if results else None,
    )


def export_not_found(export_id: str) -> NotFound:
    return NotFound(f"No such export: {export_id}", param="export_id")


class ExportService:
    """The caller's exports. Blocking (database): run it off the event loop."""

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor

    def _find(self, s: Session, export_id: str) -> Job:
        job = s.scalar(select(Job).where(Job.id == export_id, *owned(self.tenant, JobKind.export)).options(*NOT_SHOWN))
        if job is None:
            raise export_not_found(export_id)
        return job

    def _record(self, s: Session, type: EventType, job: Job, details: dict[str, Any] | None = None) -> None:
        record(
            s,
            type,
            self.actor,
            organization_id=job.organization_id,
            project_id=job.project_id,
            resource_id=job.id,
            details=details,
        )

    def create(self, req: CreateExportRequest) -> Export:
        """A new export, ``validating_files`` (it has none: the scheduler queues it at once)."""
        t = self.tenant
        if req.gguf_type is not None and req.format != "gguf":
            raise InvalidRequest(
                f"gguf_type is for format 'gguf', not {req.format!r}.", param="gguf_type", code="invalid_value"
            )
        options = ExportOptions(format=req.format, dtype=req.dtype, gguf_type=req.gguf_type)
        with self.ctx.db.session() as s:
            row = model_to_read(
                s,
                t,
                req.model,
                self.ctx.settings.base_model_paths(),
                "an export merges a fine-tuned model (ft:...) or a checkpoint model (ft:...:ckpt-step-N) into its "
                "base model; a base model has nothing to merge.",
            )
            parent = s.scalar(select(Job).where(Job.id == row.job_id))
            plan = parent.training_plan() if parent is not None else None
            job = Job(
                id=ids.export_id(),
                kind=JobKind.export,
                organization_id=t.organization_id,
                project_id=t.project_id,
                created_at=now(),
                model=req.model,
                base_model=row.base_model,
                training_file="",  # an export reads no file
                validation_file=None,
                suffix=None,
                seed=parent.seed if parent is not None else secrets.randbelow(2**31),
                job_metadata=None,
                method=parent.method if parent is not None else {"type": "supervised"},
                hyperparameters=parent.hyperparameters if parent is not None else {},
                integrations=[],
                extensions={"tunery": {"export": options.model_dump()}},
                result_files=[],
                attempts=0,
                priority=0,
                plan=plan.model_dump() if plan is not None else None,
            )
            jobstate.create(job)
            s.add(job)
            s.flush()
            add_event(s, job.id, f"Created export: {job.id} of {req.model} ({options.format})")
            details = {"kind": JobKind.export.value, "model": req.model, "format": options.format}
            self._record(s, EventType.EXPORT_CREATED, job, {"data": details})
            out = export_object(job)
        self.ctx.wake_scheduler()
        return out

    def list(self, req: ListExportsRequest) -> ExportList:
        """The tenant's exports, newest first."""
        with self.ctx.db.session() as s:
            q = select(Job).where(*owned(self.tenant, JobKind.export)).options(*NOT_SHOWN)
            rows, more = page(s, Job, q, after=req.after, limit=req.limit)
            return ExportList.of([export_object(j) for j in rows], more)

    def retrieve(self, export_id: str) -> Export:
        with self.ctx.db.session() as s:
            return export_object(self._find(s, export_id))

    def cancel(self, export_id: str) -> Export:
        """Cancel an export that has not finished (the state machine's cancel, as a job's): at once if it waits; a
        run is stopped by the scheduler."""

        def apply(s: Session) -> Export:
            job = self._find(s, export_id)
            try:
                jobstate.cancel(job, now())
            except jobstate.IllegalTransition:
                done = "been cancelled" if job.status == JobStatus.cancelled else job.status
                raise InvalidRequest(
                    f"Export {export_id} has already {done}.", param="export_id", code="export_not_cancellable"
                ) from None
            add_event(s, job.id, "Export cancelled")
            self._record(s, EventType.EXPORT_CANCELLED, job)
            return export_object(job)

        out = self.ctx.db.transaction(apply)
        self.ctx.wake_scheduler()
        return out
