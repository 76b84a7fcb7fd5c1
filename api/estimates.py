"""``POST /v1/fine_tuning/jobs/dry_run`` over HTTP: what a job would cost, without creating it (Tunery's extension).

The body is the body of ``POST /v1/fine_tuning/jobs``. The answer gives the training file's tokens with the job's
model and chat template, the resolved hyperparameters, steps, estimated GPU-hours on ``TUNERY_GPU_TYPE`` and
whether the model, method and sequence length fit the GPU's memory (docs/estimates.md); api/services/estimates.py
makes it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.errors import ERROR_RESPONSES
from api.jobs import job_service
from api.protocol.jobs import CreateJob, FineTuningJobEstimate
from api.routing import API_PREFIX
from api.services.jobs import JobService

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


@router.post("/fine_tuning/jobs/dry_run")
def dry_run(body: CreateJob, svc: JobService = Depends(job_service)) -> FineTuningJobEstimate:
    """The checks of job creation, then the plan the scheduler would resolve for this file, against the trainer's
    hardware, and its estimate."""
    return svc.dry_run(body)
