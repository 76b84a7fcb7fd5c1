"""``/v1/files``: upload (streamed to the object store), list, retrieve, delete, content."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Iterator
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.datastructures import UploadFile

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request, not_found
from api.objects import file_object
from api.pagination import limit_param, list_object, page
from api.streams import multipart_form, save_limited
from scheduler.validation import REPORT_OBJECT
from tunery import files as lifecycle
from tunery import ids
from tunery.db.models import RESULTS_PURPOSE, UPLOAD_PURPOSES, File
from tunery.files import live, report_key
from tunery.storage import ObjectNotFound

router = APIRouter()

MIN_EXPIRY, MAX_EXPIRY = 3600, 2592000


def get_file(session, t: Tenant, file_id: str) -> File:  # type: ignore[no-untyped-def]
    """One of the tenant's files; 404 when there is none, or when it has expired (gone at once, before the
    scheduler's sweep deletes it: tunery/files.py)."""
    f = session.scalar(
        select(File).where(
            File.id == file_id, File.organization_id == t.organization_id, File.project_id == t.project_id, live()
        )
    )
    if f is None:
        raise not_found(f"No such File object: {file_id}")
    return f


def _expiry(form, created: int) -> int | None:  # type: ignore[no-untyped-def]
    anchor = form.get("expires_after[anchor]")
    seconds = form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    try:
        secs = int(str(seconds))
    except ValueError:
        raise bad_request("expires_after[seconds] must be an integer.", param="expires_after.seconds") from None
    if not MIN_EXPIRY <= secs <= MAX_EXPIRY:
        raise bad_request(
            f"expires_after[seconds] must be between {MIN_EXPIRY} and {MAX_EXPIRY}.", param="expires_after.seconds"
        )
    return created + secs


@router.post("/files")
async def create_file(request: Request, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    limit = ctx.settings.max_file_bytes

    def too_large() -> APIError:
        return APIError(413, f"File is too large: the limit is {limit} bytes.", param="file", code="file_too_large")

    form = await multipart_form(request, limit, too_large, "file", max_fields=16)
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise bad_request("Missing required parameter: 'file'.", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise bad_request("Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise bad_request(
                f"Invalid value for 'purpose': {purpose!r}. Supported: {', '.join(sorted(UPLOAD_PURPOSES))}.",
                param="purpose",
            )
        filename = (upload.filename or "upload").rsplit("/", 1)[-1][:512]
        if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
            raise bad_request(
                f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {filename!r}).", param="file"
            )
        created = int(time.time())
        expires_at = _expiry(form, created)
        file_id = ids.file_id()
        key = f"files/{file_id}"

        size, sha = await save_limited(ctx.store, key, upload.file, limit, too_large)
        if size == 0:
            ctx.store.delete(key)
            raise bad_request("The file is empty.", param="file")
        row = File(
            id=file_id,
            organization_id=t.organization_id,
            project_id=t.project_id,
            filename=filename,
            purpose=purpose,
            bytes=size,
            sha256=sha,
            object_key=key,
            created_at=created,
            expires_at=expires_at,
            status=initial_status(purpose),
            status_details=None,
        )
        try:
            with ctx.db.session() as s:
                s.add(row)
        except Exception:
            ctx.store.delete(key)
            raise
        ctx.wake_scheduler()  # it validates new training files
        return file_object(row)
    finally:
        await form.close()


@router.get("/files")
def list_files(
    purpose: str | None = None,
    limit: int = limit_param(10000),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    ctx: AppContext = Depends(get_ctx),
    t: Tenant = Depends(tenant),
) -> dict:
    with ctx.db.session() as s:
        q = select(File).where(File.organization_id == t.organization_id, File.project_id == t.project_id, live())
        if purpose:
            q = q.where(File.purpose == purpose)
        rows, more = page(s, File, q, after=after, limit=limit, newest_first=order == "desc")
        return list_object([file_object(f) for f in rows], more)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    with ctx.db.session() as s:
        return file_object(get_file(s, t, file_id))


@router.delete("/files/{file_id}")
def delete_file(file_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    # The same deletion as the expiry sweep's (tunery/files.py), of one of the tenant's files that has not expired.
    mine = (File.organization_id == t.organization_id, File.project_id == t.project_id, live())
    if not lifecycle.delete_file(ctx.db, ctx.store, file_id, *mine):
        raise not_found(f"No such File object: {file_id}")
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/validation")
def file_validation(
    file_id: str,
    model: str | None = Query(None, description="The report made for a job on this base model."),
    ctx: AppContext = Depends(get_ctx),
    t: Tenant = Depends(tenant),
) -> dict:
    """Tunery's extension: the validation report of a training file (format, counts, line errors, duplicates,
    token statistics). Without ``model``: the report made at upload; with it: the one a job on that base model
    made when it validated its files."""
    with ctx.db.session() as s:
        f = get_file(s, t, file_id)
    if f.purpose != "fine-tune":
        raise bad_request(f"File {file_id} has purpose {f.purpose!r}: only fine-tune files are validated.", param="id")
    if model:
        try:
            return dict(json.loads(ctx.store.get_bytes(report_key(file_id, model))))
        except ObjectNotFound:
            raise not_found(
                f"No report of file {file_id} for model {model!r}: one is made when a job on that model validates "
                "the file.",
                param="model",
            ) from None
    if f.status == "uploaded":
        return {"object": REPORT_OBJECT, "file_id": file_id, "status": "pending"}
    try:
        report: dict = json.loads(ctx.store.get_bytes(report_key(file_id)))
    except ObjectNotFound:
        return {"object": REPORT_OBJECT, "file_id": file_id, "status": f.status, "status_details": f.status_details}
    return report


def initial_status(purpose: str) -> str:
    """Training files are validated by the scheduler (uploaded -> processed | error); others are ready at once."""
    return "uploaded" if purpose == "fine-tune" else "processed"


def base64_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Base64 of a stream of chunks, streamed (each piece a multiple of 3 bytes, so the pieces join into one)."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        whole = len(data) - len(data) % 3
        carry = data[whole:]
        if whole:
            yield base64.b64encode(data[:whole])
    if carry:
        yield base64.b64encode(carry)


@router.get("/files/{file_id}/content")
def file_content(file_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> StreamingResponse:
    """The file's bytes as stored; a job's results file (purpose ``fine-tune-results``) base64-encoded, as OpenAI
    serves it, so code written for OpenAI (``base64.b64decode(client.files.content(id).read())``) reads it."""
    with ctx.db.session() as s:
        f = get_file(s, t, file_id)
    chunks: Iterable[bytes] = ctx.store.iter_chunks(f.object_key)
    size, media = f.bytes, "text/csv" if f.filename.endswith(".csv") else "application/octet-stream"
    if f.purpose == RESULTS_PURPOSE:
        chunks, size, media = base64_chunks(chunks), 4 * ((f.bytes + 2) // 3), "text/plain"
    return StreamingResponse(
        chunks,
        media_type=media,
        headers={
            "content-length": str(size),
            "content-disposition": f'attachment; filename="{f.filename}"',
        },
    )


@router.get("/files/{file_id}/url")
def file_url(file_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    """Tunery's extension: a presigned URL that downloads the file straight from the object store (S3), without
    an API key, until ``expires_at`` (``TUNERY_S3_PRESIGN_SECONDS``). Large results and files skip the API."""
    with ctx.db.session() as s:
        f = get_file(s, t, file_id)
    seconds = ctx.settings.s3_presign_seconds
    expires_at = int(time.time()) + seconds
    url = ctx.store.presigned_url(f.object_key, expires_in=seconds, filename=f.filename)
    if url is None:
        raise bad_request(
            "This server's object store has no presigned URLs (a local folder): use /v1/files/{id}/content.",
            param="file_id",
            code="presigned_urls_unsupported",
        )
    return {"object": "file.url", "id": file_id, "url": url, "expires_at": expires_at}
