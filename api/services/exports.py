"""Merged-model exports (docs/exports.md): an existing ``ft:`` model or checkpoint model merged into its base and
stored as one downloadable file, as a short job of its own: create one, list, retrieve and cancel them.

As an evaluation (api/services/evaluations.py), an export is a short job (api/services/short_jobs.py: finding,
listing, retrieving and cancelling are theirs). Its run
(trainer/export_task.py) merges the model with trainer/export.py and stores the result under the export's own prefix;
the reporting service makes that object (at the server's key, never one the trainer names) a file of purpose
``fine-tune-results`` owned by the project: ``result_file``.

The checks, in the other routes' words: the model is one the project may use (its own, or shared with it; otherwise
the 404 of ``GET /v1/models/{model}``); a base model is refused (400 ``invalid_model``: there is nothing to merge);
``gguf_type`` goes with ``format: gguf`` only. A GGUF of a model that is not a Llama is refused with
``unsupported_architecture`` (naming ``format``) when this server can read the base model's config, else the trainer
fails the export with that code.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from api.errors import InvalidRequest
from api.protocol.exports import CreateExportRequest, Export, ExportList
from api.protocol.jobs import FineTuningJobError
from api.services.models import model_to_read
from api.services.short_jobs import ShortJobService
from tunery import ids
from tunery.audit import EventType
from tunery.db import Job
from tunery.exports import ExportOptions, gguf_refusal
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


class ExportService(ShortJobService[Export, ExportList]):
    """The caller's exports. Blocking (database): run it off the event loop."""

    kind = JobKind.export
    noun = "export"
    created = EventType.EXPORT_CREATED
    cancelled = EventType.EXPORT_CANCELLED
    list_type = ExportList
    to_object = staticmethod(export_object)

    def _check_gguf(self, base_model: str) -> None:
        """A GGUF of a model whose architecture the writer cannot lay out is refused now, when this server can read
        the base model's ``config.json`` (tunery.exports.gguf_refusal, the trainer's own rule); otherwise the trainer
        fails the export with the same code."""
        folder = self.ctx.settings.base_model_paths().get(base_model)
        try:
            config = json.loads((Path(folder) / "config.json").read_text()) if folder else None
        except (OSError, ValueError):
            config = None
        refusal = gguf_refusal(config) if isinstance(config, dict) else None
        if refusal is not None:
            raise InvalidRequest(f"{refusal}.", param="format", code="unsupported_architecture")

    def create(self, req: CreateExportRequest) -> Export:
        """A new export, ``validating_files`` (it has none: the scheduler queues it at once)."""
        if req.gguf_type is not None and req.format != "gguf":
            raise InvalidRequest(
                f"gguf_type is for format 'gguf', not {req.format!r}.", param="gguf_type", code="invalid_value"
            )
        options = ExportOptions(format=req.format, dtype=req.dtype, gguf_type=req.gguf_type)
        with self.ctx.db.session() as s:
            row = model_to_read(
                s,
                self.tenant,
                req.model,
                self.ctx.settings.base_model_paths(),
                "an export merges a fine-tuned model (ft:...) or a checkpoint model (ft:...:ckpt-step-N) into its "
                "base model; a base model has nothing to merge.",
            )
            if options.format == "gguf":
                self._check_gguf(row.base_model)
            job_id = ids.export_id()
            out = self._new(
                s,
                job_id=job_id,
                model=req.model,
                base_model=row.base_model,
                parent=s.scalar(select(Job).where(Job.id == row.job_id)),
                options={"export": options.model_dump()},
                events=[f"Created export: {job_id} of {req.model} ({options.format})"],
                details={"model": req.model, "format": options.format},
            )
        self.ctx.wake_scheduler()
        return out
