"""``/v1/models`` over HTTP: path parameters in, api/services/models.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from api.auth import request_principal
from api.context import get_ctx, read_json
from api.errors import ERROR_RESPONSES
from api.protocol.base import Name
from api.protocol.models import Model, ModelDeleted, ModelList
from api.services.models import ModelService

router = APIRouter(responses=ERROR_RESPONSES)


async def model_service(request: Request) -> ModelService:
    """The caller's models. On the event loop, with ``get_ctx`` and ``tenant`` called here: none does I/O, and
    FastAPI would run each as a ``def`` dependency in the thread pool, a trip there and back per request."""
    ctx = get_ctx(request)
    p = request_principal(request, ctx)
    return ModelService(ctx, p.tenant(ctx.settings), p.actor)


# The read routes: coroutines with one trip to the read routes' threads, as the job routes (api/jobs.py), same reasons.
@router.get("/models", response_model=ModelList)
async def list_models(svc: ModelService = Depends(model_service)) -> Response:
    return await read_json(svc.ctx, svc.list)


# `{model:path}`: ids contain ':' and, from older SDKs, a raw '/'.
@router.get("/models/{model:path}", response_model=Model)
async def retrieve_model(model: Name, svc: ModelService = Depends(model_service)) -> Response:
    return await read_json(svc.ctx, svc.retrieve, model)


@router.delete("/models/{model:path}")
async def delete_model(model: Name, svc: ModelService = Depends(model_service)) -> ModelDeleted:
    return await svc.delete(model)
