"""Rows -> OpenAI objects, with every field OpenAI's schema requires (null where unknown)."""

from __future__ import annotations

from typing import Any

from tunery.db import Checkpoint, File, FineTunedModel, Job, JobEvent
from tunery.jobstate import JobStatus


def file_object(f: File) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
    }
    # Optional and not nullable in OpenAI's schema: present only when set.
    if f.expires_at is not None:
        out["expires_at"] = f.expires_at
    if f.status_details is not None:
        out["status_details"] = f.status_details
    return out


def job_object(j: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": j.id,
        "object": "fine_tuning.job",
        "created_at": j.created_at,
        "error": j.error,
        # The name is reserved when the job is queued (checkpoints use it) but shown only once it exists.
        "fine_tuned_model": j.fine_tuned_model if j.status == JobStatus.succeeded else None,
        "finished_at": j.finished_at,
        "hyperparameters": j.hyperparameters,
        "model": j.model,
        "organization_id": j.organization_id,
        "result_files": list(j.result_files or []),
        "seed": j.seed,
        "status": j.status,
        "trained_tokens": j.trained_tokens,
        "training_file": j.training_file,
        "validation_file": j.validation_file,
        "integrations": j.integrations or [],
        "estimated_finish": j.estimated_finish,
        "method": j.method,
        "metadata": j.job_metadata,
        "user_provided_suffix": j.suffix,
    }
    # Tunery's extensions (resolved, defaults filled in), only on jobs created with the field ``tunery``: a plain
    # OpenAI-shaped job has exactly OpenAI's fields. Every job stores ``tunery.training`` (and a dpo job
    # ``tunery.method``); ``tunery.data`` is stored exactly when the request had ``tunery`` (api/jobs.py
    # ``_extensions``; before ``tunery.training`` existed, ``extensions`` itself was stored only then).
    tunery = (j.extensions or {}).get("tunery")
    if tunery is not None and "data" in tunery:
        out["tunery"] = tunery
    return out


def event_object(e: JobEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "object": "fine_tuning.job.event",
        "created_at": e.created_at,
        "level": e.level,
        "message": e.message,
        "type": e.type,
        "data": e.data or {},
    }


def checkpoint_object(c: Checkpoint, best: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": c.created_at,
        "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
        "fine_tuning_job_id": c.job_id,
        "step_number": c.step_number,
        "metrics": c.metrics,
    }
    if best is not None:  # Tunery's extension: the checkpoint with the lowest validation loss (docs/adapters.md)
        out["tunery"] = {"best": best}
    return out


def best_checkpoint_step(metrics_by_step: list[tuple[int, dict[str, Any] | None]]) -> int | None:
    """The step of the checkpoint with the lowest ``valid_loss`` (the earliest on a tie); None without one."""
    best: tuple[float, int] | None = None
    for step, metrics in metrics_by_step:
        loss = (metrics or {}).get("full_valid_loss", (metrics or {}).get("valid_loss"))
        if isinstance(loss, int | float) and loss == loss and (best is None or (loss, step) < best):
            best = (float(loss), step)
    return best[1] if best else None


def model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def ft_model_object(m: FineTunedModel) -> dict[str, Any]:
    return model_object(m.id, m.created_at, m.owned_by)
