"""``/v1/fine_tuning/alpha/graders/run`` and ``/validate`` over HTTP: debug a grader before a reinforcement job
spends GPU time on it (docs/graders.md); api/services/graders.py does the rest. Any key's role may call them
(api/auth.py's READ_POSTS): they store nothing; a score_model's judge is one of the project's models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import request_tenant
from api.context import get_ctx
from api.errors import ERROR_RESPONSES
from api.protocol.graders import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from api.routing import API_PREFIX
from api.services.graders import GraderService

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


async def grader_service(request: Request) -> GraderService:
    """The caller's graders, on the event loop (as api/chat.py's service: nothing here does I/O)."""
    ctx = get_ctx(request)
    return GraderService(ctx, request_tenant(request, ctx))


@router.post("/fine_tuning/alpha/graders/run")
async def run_grader(body: RunGraderRequest, svc: GraderService = Depends(grader_service)) -> RunGraderResponse:
    return await svc.run(body)


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(
    body: ValidateGraderRequest, svc: GraderService = Depends(grader_service)
) -> ValidateGraderResponse:
    return svc.validate(body)
