"""``/v1/models``: base models, fine-tuned models and checkpoint models; retrieve; delete fine-tuned."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request
from api.objects import ft_model_object, model_object
from serving.engine import ModelRef
from tunery.db import FineTunedModel

router = APIRouter()

BASE_OWNER = "tunery"


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    base_name: str
    base_path: str
    adapter_prefix: str | None  # None for a base model


def model_ref(model: ResolvedModel) -> ModelRef:
    """What the serving backend runs for a resolved model."""
    return ModelRef(
        base_name=model.base_name,
        base_path=model.base_path,
        adapter_name=model.id if model.adapter_prefix else None,
        adapter_prefix=model.adapter_prefix,
    )


def _created(path: str) -> int:
    try:
        return int(os.stat(path).st_mtime)
    except OSError:
        return 0


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def resolve_model(s: Session, ctx: AppContext, t: Tenant, model: str) -> ResolvedModel:
    bases = ctx.settings.base_model_paths()
    if model in bases:
        return ResolvedModel(model, model, bases[model], None)
    row = s.scalar(
        select(FineTunedModel).where(
            FineTunedModel.id == model,
            FineTunedModel.organization_id == t.organization_id,
            FineTunedModel.project_id == t.project_id,
        )
    )
    if row is None or row.base_model not in bases:
        raise model_not_found(model)
    return ResolvedModel(row.id, row.base_model, bases[row.base_model], row.object_prefix)


@router.get("/models")
def list_models(ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    data = [model_object(name, _created(path), BASE_OWNER) for name, path in ctx.settings.base_model_paths().items()]
    with ctx.db.session() as s:
        rows = s.scalars(
            select(FineTunedModel)
            .where(FineTunedModel.organization_id == t.organization_id, FineTunedModel.project_id == t.project_id)
            .order_by(FineTunedModel.pk.desc())
        )
        data += [ft_model_object(m) for m in rows]
    return {"object": "list", "data": data}


# `{model:path}`: ids contain ':' and, from older SDKs, a raw '/'.
@router.get("/models/{model:path}")
def retrieve_model(model: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    bases = ctx.settings.base_model_paths()
    if model in bases:
        return model_object(model, _created(bases[model]), BASE_OWNER)
    with ctx.db.session() as s:
        resolve_model(s, ctx, t, model)
        row = s.scalar(select(FineTunedModel).where(FineTunedModel.id == model))
        assert row is not None
        return ft_model_object(row)


@router.delete("/models/{model:path}")
async def delete_model(model: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    if model in ctx.settings.base_model_paths():
        raise bad_request(f"{model} is a base model; only fine-tuned models can be deleted.", param="model")

    def delete() -> ModelRef:
        with ctx.db.session() as s:
            ref = model_ref(resolve_model(s, ctx, t, model))
            row = s.scalar(select(FineTunedModel).where(FineTunedModel.id == model))
            assert row is not None
            s.delete(row)
            return ref

    ref = await run_in_threadpool(delete)
    if ctx.serving is not None:  # from then on the model is unknown here (404) and unloaded from the engine
        await ctx.serving.unload(ref)
    return {"id": model, "object": "model", "deleted": True}
