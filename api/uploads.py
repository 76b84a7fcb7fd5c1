"""``/v1/uploads`` over HTTP: JSON bodies and the multipart part in, api/services/uploads.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.auth import Principal, principal
from api.context import AppContext, get_ctx
from api.errors import ERROR_RESPONSES, InvalidRequest
from api.limits import MULTIPART_OVERHEAD, narrow_body, upload_body
from api.protocol.files import CompleteUploadRequest, CreateUploadRequest, Upload, UploadPart
from api.routing import API_PREFIX
from api.services.uploads import UploadService, part_too_large
from api.streams import multipart_body, multipart_form

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


def upload_service(ctx: AppContext = Depends(get_ctx), p: Principal = Depends(principal)) -> UploadService:
    return UploadService(ctx, p.tenant(ctx.settings), p.actor)


@router.post("/uploads")
def create_upload(body: CreateUploadRequest, svc: UploadService = Depends(upload_service)) -> Upload:
    return svc.create(body)


@router.post(
    "/uploads/{upload_id}/parts",
    openapi_extra=multipart_body(
        {"data": {"type": "string", "format": "binary", "description": "The part's bytes."}}, ["data"]
    ),
)
@upload_body(lambda settings: settings.max_upload_part_bytes, part_too_large)
async def add_part(upload_id: str, request: Request, svc: UploadService = Depends(upload_service)) -> UploadPart:
    # Before a byte of the part is read: the upload exists and takes parts (404, 400), and the part fits in what is
    # left of its declared bytes (413 at once from the Content-Length, or as soon as the count passes it).
    room = await run_in_threadpool(svc.part_room, upload_id)
    narrow_body(request, room.limit + MULTIPART_OVERHEAD, room.too_large)
    form = await multipart_form(request, "data", max_fields=8)
    try:
        data = form.get("data")
        if not isinstance(data, UploadFile):
            raise InvalidRequest("Missing required parameter: 'data'.", param="data")
        return await run_in_threadpool(svc.add_part, upload_id, data.file)
    finally:
        await form.close()


@router.post("/uploads/{upload_id}/complete")
def complete_upload(
    upload_id: str, body: CompleteUploadRequest, svc: UploadService = Depends(upload_service)
) -> Upload:
    return svc.complete(upload_id, body)


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, svc: UploadService = Depends(upload_service)) -> Upload:
    return svc.cancel(upload_id)
