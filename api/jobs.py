"""``/v1/fine_tuning/jobs`` over HTTP: create, list, retrieve, cancel, events, checkpoints. A JSON body, query and
path parameters in; api/services/jobs.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.jobs import (
    CreateJob,
    FineTuningJob,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListJobCheckpointsRequest,
    ListJobEventsRequest,
    ListJobsRequest,
    ListPaginatedFineTuningJobsResponse,
)
from api.services.jobs import JobService

router = APIRouter(responses=ERROR_RESPONSES)


def job_service(ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> JobService:
    return JobService(ctx, t)


@router.post("/fine_tuning/jobs")
def create_job(body: CreateJob, svc: JobService = Depends(job_service)) -> FineTuningJob:
    return svc.create(body)


def _metadata(request: Request) -> dict[str, str] | None:
    """``metadata[k]=v`` query parameters (the SDK's deepObject encoding of ``metadata``): all must match."""
    wanted = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.multi_items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    return wanted or None


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = limit_param(20),
    svc: JobService = Depends(job_service),
) -> ListPaginatedFineTuningJobsResponse:
    return svc.list(ListJobsRequest(after=after, limit=limit, metadata=_metadata(request)))


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: Name, svc: JobService = Depends(job_service)) -> FineTuningJob:
    return svc.retrieve(job_id)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: Name, svc: JobService = Depends(job_service)) -> FineTuningJob:
    return svc.cancel(job_id)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: Name,
    after: str | None = None,
    limit: int = limit_param(20),
    svc: JobService = Depends(job_service),
) -> ListFineTuningJobEventsResponse:
    return svc.events(job_id, ListJobEventsRequest(after=after, limit=limit))


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: Name,
    after: str | None = None,
    limit: int = limit_param(10),
    svc: JobService = Depends(job_service),
) -> ListFineTuningJobCheckpointsResponse:
    return svc.checkpoints(job_id, ListJobCheckpointsRequest(after=after, limit=limit))
