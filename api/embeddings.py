"""``POST /v1/embeddings`` over HTTP (docs/serving.md, "Embeddings"); api/services/embeddings.py does the rest. A
reader may call it (api/auth.py's READ_POSTS): it stores nothing."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import request_tenant
from api.context import get_ctx
from api.errors import ERROR_RESPONSES
from api.protocol.embeddings import EmbeddingList, EmbeddingRequest
from api.routing import API_PREFIX
from api.services.embeddings import EmbeddingService

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


async def embedding_service(request: Request) -> EmbeddingService:
    ctx = get_ctx(request)
    return EmbeddingService(ctx, request_tenant(request, ctx))


@router.post("/embeddings")
async def create_embeddings(req: EmbeddingRequest, svc: EmbeddingService = Depends(embedding_service)) -> EmbeddingList:
    return await svc.create(req)
