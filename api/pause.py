"""``POST /v1/fine_tuning/jobs/{id}/pause`` and ``.../resume`` (docs/resilience.md).

Pause: a running job becomes ``paused`` at once; its trainer is told in the reply to its next report, saves its
full state (adapter, optimizer, LR scheduler, RNG) at the next step boundary and exits; the scheduler then says in
an event where it stopped. Resume: a paused job goes back to ``queued`` and its next run continues from the newest
complete checkpoint, ending where an uninterrupted run would.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import bad_request
from api.jobs import change_job
from tunery import jobstate
from tunery.db import Job
from tunery.db.ops import add_event

router = APIRouter()


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    def pause(s: Session, job: Job) -> None:
        try:
            jobstate.pause(job)
        except jobstate.IllegalTransition:
            raise bad_request(
                f"Job {job_id} is {job.status}; only a running job can be paused.",
                param="fine_tuning_job_id",
                code="job_not_pausable",
            ) from None
        add_event(s, job.id, "Pausing fine-tuning job: the trainer saves its state at the next step and stops")

    return change_job(ctx, t, job_id, pause)


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    def resume(s: Session, job: Job) -> None:
        try:
            jobstate.resume(job)
        except jobstate.IllegalTransition:
            raise bad_request(
                f"Job {job_id} is {job.status}; only a paused job can be resumed.",
                param="fine_tuning_job_id",
                code="job_not_resumable",
            ) from None
        add_event(s, job.id, "Fine-tuning job resumed: queued to continue from its last checkpoint")

    return change_job(ctx, t, job_id, resume)
