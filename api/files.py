"""``/v1/files`` over HTTP: the multipart upload, query and path parameters in, api/services/files.py does the rest."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from api.auth import caller_service, service_dependency
from api.context import read_json
from api.encoded import JSON
from api.errors import ERROR_RESPONSES, InvalidRequest
from api.limits import upload_body
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.files import (
    MAX_EXPIRY,
    MIN_EXPIRY,
    CreateFileRequest,
    ExpiresAfter,
    FileDeleted,
    FileList,
    FileObject,
    FileURL,
    FileValidationReport,
    ListFilesRequest,
)
from api.routing import API_PREFIX
from api.services.files import FileService, file_too_large
from api.streams import multipart_body, multipart_form
from tunery.db.models import UPLOAD_PURPOSES
from tunery.storage import content_disposition

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


file_service = service_dependency(FileService)


def _expires_after(form: FormData) -> ExpiresAfter | None:
    """``expires_after[anchor]`` and ``expires_after[seconds]``: the form's spelling of the object."""
    anchor = form.get("expires_after[anchor]")
    seconds = form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    try:
        secs = int(str(seconds))
    except ValueError:
        raise InvalidRequest("expires_after[seconds] must be an integer.", param="expires_after.seconds") from None
    try:
        return ExpiresAfter(anchor="created_at", seconds=secs)
    except ValidationError:
        raise InvalidRequest(
            f"expires_after[seconds] must be between {MIN_EXPIRY} and {MAX_EXPIRY}.", param="expires_after.seconds"
        ) from None


def _create_request(form: FormData) -> tuple[CreateFileRequest, UploadFile]:
    upload = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid value for 'purpose': {purpose!r}. Supported: {', '.join(sorted(UPLOAD_PURPOSES))}.",
            param="purpose",
        )
    expires_after = _expires_after(form)
    return CreateFileRequest(purpose=purpose, filename=upload.filename, expires_after=expires_after), upload  # type: ignore[arg-type]


FILE_FORM = multipart_body(
    {
        "file": {"type": "string", "format": "binary", "description": "The file (JSONL for fine-tuning)."},
        "purpose": {"type": "string", "enum": sorted(UPLOAD_PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": MIN_EXPIRY, "maximum": MAX_EXPIRY},
    },
    ["file", "purpose"],
)


@router.post("/files", openapi_extra=FILE_FORM)
@upload_body(lambda settings: settings.max_file_bytes, file_too_large)
async def create_file(request: Request, svc: FileService = Depends(file_service)) -> FileObject:
    form = await multipart_form(request, "file", max_fields=16)
    try:
        req, upload = _create_request(form)
        return await run_in_threadpool(svc.create, req, upload.file)
    finally:
        await form.close()


@router.get("/files", response_model=FileList)
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = limit_param(10000),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> Response:
    svc = caller_service(request, FileService)  # polled: no Depends (api/auth.py's service_dependency)
    req = ListFilesRequest(purpose=purpose, limit=limit, order=order, after=after)
    return await read_json(svc.ctx, lambda: FileList.json_of(svc.list_encoded(req, JSON)))


@router.get("/files/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: Name, request: Request) -> Response:
    svc = caller_service(request, FileService)  # polled: no Depends
    return await read_json(svc.ctx, svc.retrieve_encoded, file_id, JSON)


@router.delete("/files/{file_id}")
def delete_file(file_id: Name, svc: FileService = Depends(file_service)) -> FileDeleted:
    return svc.delete(file_id)


@router.get("/files/{file_id}/validation")
def file_validation(
    file_id: Name,
    model: Name | None = Query(None, description="The report made for a job on this base model."),
    svc: FileService = Depends(file_service),
) -> FileValidationReport:
    """Tunery's extension: the validation report of a training file (format, counts, line errors, duplicates,
    token statistics). Without ``model``: the report made at upload; with it: the one a job on that base model
    made when it validated its files."""
    return svc.validation(file_id, model)


_BYTES = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes; a results file (purpose fine-tune-results) base64-encoded.",
            "content": {"application/octet-stream": _BYTES, "text/csv": _BYTES, "text/plain": _BYTES},
        }
    },
)
def file_content(file_id: Name, svc: FileService = Depends(file_service)) -> StreamingResponse:
    """The file's bytes as stored; a job's results file base64-encoded, as OpenAI serves it."""
    c = svc.content(file_id)
    return StreamingResponse(
        c.chunks,
        media_type=c.media_type,
        headers={"content-length": str(c.size), "content-disposition": content_disposition(c.filename)},
    )


@router.get("/files/{file_id}/url")
def file_url(file_id: Name, svc: FileService = Depends(file_service)) -> FileURL:
    """Tunery's extension: a presigned URL that downloads the file straight from the object store (S3), without
    an API key, until ``expires_at`` (``TUNERY_S3_PRESIGN_SECONDS``). Large results and files skip the API."""
    return svc.url(file_id)
