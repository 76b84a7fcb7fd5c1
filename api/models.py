"""``/v1/models`` over HTTP: path parameters in, api/services/models.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import ERROR_RESPONSES
from api.protocol.base import Name
from api.protocol.models import Model, ModelDeleted, ModelList
from api.services.models import ModelService

router = APIRouter(responses=ERROR_RESPONSES)


def model_service(ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> ModelService:
    return ModelService(ctx, t)


@router.get("/models")
def list_models(svc: ModelService = Depends(model_service)) -> ModelList:
    return svc.list()


# `{model:path}`: ids contain ':' and, from older SDKs, a raw '/'.
@router.get("/models/{model:path}")
def retrieve_model(model: Name, svc: ModelService = Depends(model_service)) -> Model:
    return svc.retrieve(model)


@router.delete("/models/{model:path}")
async def delete_model(model: Name, svc: ModelService = Depends(model_service)) -> ModelDeleted:
    return await svc.delete(model)
