"""``POST /v1/fine_tuning/jobs/{id}/pause`` and ``.../resume`` over HTTP (docs/resilience.md): path parameters in,
:meth:`api.services.jobs.JobService.pause` and ``resume`` do the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.errors import ERROR_RESPONSES
from api.jobs import job_service
from api.protocol.base import Name
from api.protocol.jobs import FineTuningJob
from api.routing import API_PREFIX
from api.services.jobs import JobService

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: Name, svc: JobService = Depends(job_service)) -> FineTuningJob:
    """A running job becomes ``paused`` at once; its trainer saves its full state at the next step and exits."""
    return svc.pause(job_id)


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: Name, svc: JobService = Depends(job_service)) -> FineTuningJob:
    """A paused job goes back to ``queued``; its next run continues from the newest complete checkpoint."""
    return svc.resume(job_id)
