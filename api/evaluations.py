"""``/v1/tunery/evaluations`` over HTTP (Tunery's extension, docs/evals.md): the eval report of an existing ``ft:``
model or checkpoint model against a file, as a short job of its own. Readers may read them; members, owners and the
admin may create and cancel them (api/auth.py's rule for any write). api/services/evaluations.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.auth import service_dependency
from api.context import read_json
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.evaluations import CreateEvaluationRequest, Evaluation, EvaluationList, ListEvaluationsRequest
from api.routing import API_PREFIX
from api.services.evaluations import EvaluationService
from tunery.evalreport import EvalReport

router = APIRouter(prefix=f"{API_PREFIX}/tunery/evaluations", responses=ERROR_RESPONSES)


evaluation_service = service_dependency(EvaluationService)


@router.post("")
def create_evaluation(
    body: CreateEvaluationRequest, svc: EvaluationService = Depends(evaluation_service)
) -> Evaluation:
    return svc.create(body)


@router.get("", response_model=EvaluationList)
async def list_evaluations(
    after: str | None = None, limit: int = limit_param(20), svc: EvaluationService = Depends(evaluation_service)
) -> Response:
    return await read_json(svc.ctx, svc.list, ListEvaluationsRequest(after=after, limit=limit))


@router.get("/{evaluation_id}", response_model=Evaluation)
async def retrieve_evaluation(evaluation_id: Name, svc: EvaluationService = Depends(evaluation_service)) -> Response:
    return await read_json(svc.ctx, svc.retrieve, evaluation_id)


@router.post("/{evaluation_id}/cancel")
def cancel_evaluation(evaluation_id: Name, svc: EvaluationService = Depends(evaluation_service)) -> Evaluation:
    return svc.cancel(evaluation_id)


@router.get("/{evaluation_id}/report", response_model=EvalReport)
async def evaluation_report(evaluation_id: Name, svc: EvaluationService = Depends(evaluation_service)) -> Response:
    """The evaluation's eval report, once written (the shape of a job's: docs/evals.md)."""
    return await read_json(svc.ctx, svc.report, evaluation_id, objects=True)
