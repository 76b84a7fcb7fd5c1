"""``/v1/fine_tuning/jobs`` over HTTP: create, list, retrieve, cancel, events, checkpoints. A JSON body, query and
path parameters in; api/services/jobs.py does the rest.

The read routes (list, retrieve, events, checkpoints), the ones clients poll, are coroutines that run their blocking
service call, and the writing of its JSON, where api/context.py's ``run_read`` says (on the event loop on SQLite, in
the read threads on PostgreSQL), in one call (``read_json``). A ``def`` route would make two trips to anyio's threads
(the call, then FastAPI's check of what it returned)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from api.auth import caller_service, service_dependency
from api.context import read_json
from api.encoded import JSON
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
from api.routing import API_PREFIX
from api.services.jobs import JobService
from tunery.evalreport import EvalReport

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


job_service = service_dependency(JobService)


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


@router.get("/fine_tuning/jobs", response_model=ListPaginatedFineTuningJobsResponse)
async def list_jobs(request: Request, after: str | None = None, limit: int = limit_param(20)) -> Response:
    svc = caller_service(request, JobService)  # polled: no Depends (api/auth.py's service_dependency)
    req = ListJobsRequest(after=after, limit=limit, metadata=_metadata(request))
    return await read_json(svc.ctx, lambda: ListPaginatedFineTuningJobsResponse.json_of(svc.list_encoded(req, JSON)))


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob)
async def retrieve_job(job_id: Name, request: Request) -> Response:
    svc = caller_service(request, JobService)  # polled: no Depends
    return await read_json(svc.ctx, svc.retrieve_encoded, job_id, JSON)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: Name, svc: JobService = Depends(job_service)) -> FineTuningJob:
    return svc.cancel(job_id)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=ListFineTuningJobEventsResponse)
async def list_events(
    job_id: Name, request: Request, after: str | None = None, limit: int = limit_param(20)
) -> Response:
    svc = caller_service(request, JobService)  # polled: no Depends
    req = ListJobEventsRequest(after=after, limit=limit)
    return await read_json(
        svc.ctx, lambda: ListFineTuningJobEventsResponse.json_of(svc.events_encoded(job_id, req, JSON))
    )


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=ListFineTuningJobCheckpointsResponse)
async def list_checkpoints(
    job_id: Name, request: Request, after: str | None = None, limit: int = limit_param(10)
) -> Response:
    svc = caller_service(request, JobService)  # polled: no Depends
    return await read_json(svc.ctx, svc.checkpoints, job_id, ListJobCheckpointsRequest(after=after, limit=limit))


@router.get("/fine_tuning/jobs/{job_id}/eval_report", response_model=EvalReport)
async def job_eval_report(job_id: Name, svc: JobService = Depends(job_service)) -> Response:
    """Tunery: the eval report of the job's final model (docs/evals.md)."""
    return await read_json(svc.ctx, svc.eval_report, job_id, objects=True)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint_id}/eval_report", response_model=EvalReport)
async def checkpoint_eval_report(job_id: Name, checkpoint_id: Name, svc: JobService = Depends(job_service)) -> Response:
    """Tunery: the eval report of one of the job's checkpoints (docs/evals.md)."""
    return await read_json(svc.ctx, svc.eval_report, job_id, checkpoint_id, objects=True)
