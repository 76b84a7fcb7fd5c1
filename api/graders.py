"""``/v1/fine_tuning/alpha/graders/run`` and ``/validate`` over HTTP: debug a grader before a reinforcement job
spends GPU time on it (docs/graders.md); api/services/graders.py does the rest. Any key's role may call them
(api/auth.py's READ_POSTS): they read and store nothing of the project."""

from __future__ import annotations

from fastapi import APIRouter

from api.errors import ERROR_RESPONSES
from api.protocol.graders import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from api.services import graders

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/fine_tuning/alpha/graders/run")
def run_grader(body: RunGraderRequest) -> RunGraderResponse:
    return graders.run(body)


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(body: ValidateGraderRequest) -> ValidateGraderResponse:
    return graders.validate(body)
