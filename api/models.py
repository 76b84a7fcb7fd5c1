"""``/v1/models`` over HTTP, and Tunery's ``/v1/tunery/models/{model}/archive``: path parameters in,
api/services/models.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from api.auth import caller_service, service_dependency
from api.context import read_json
from api.encoded import JSON
from api.errors import ERROR_RESPONSES
from api.protocol.base import Name
from api.protocol.models import Model, ModelDeleted, ModelList
from api.routing import API_PREFIX
from api.services.models import ModelService
from tunery.storage import content_disposition

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


model_service = service_dependency(ModelService)


# The read routes: coroutines whose reads run where api/context.py's run_read says, as the job routes (api/jobs.py).
@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> Response:
    svc = caller_service(request, ModelService)  # polled: no Depends (api/auth.py's service_dependency)
    return await read_json(svc.ctx, lambda: ModelList.json_of(svc.list_encoded(JSON)))


# `{model:path}`: ids contain ':' and, from older SDKs, a raw '/'.
@router.get("/models/{model:path}", response_model=Model)
async def retrieve_model(model: Name, svc: ModelService = Depends(model_service)) -> Response:
    return await read_json(svc.ctx, svc.retrieve, model)


@router.delete("/models/{model:path}")
async def delete_model(model: Name, svc: ModelService = Depends(model_service)) -> ModelDeleted:
    return await svc.delete(model)


@router.get(
    "/tunery/models/{model:path}/archive",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The model's folder as a .tar.gz (streamed: no Content-Length).",
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def model_archive(model: Name, svc: ModelService = Depends(model_service)) -> StreamingResponse:
    """Tunery's extension: a fine-tuned or checkpoint model as a ``.tar.gz`` of its folder (the PEFT adapter or the
    whole model, tokenizer and chat template, ``tunery_manifest.json`` with the SHA-256 of every file, and
    ``eval_report.json`` when there is one), under one top folder named after the model (docs/adapters.md)."""
    a = svc.archive(model)
    return StreamingResponse(
        a.chunks, media_type="application/gzip", headers={"content-disposition": content_disposition(a.filename)}
    )
