"""``/v1/uploads``: a large file sent in parts (each streamed to the object store), assembled into a File.

An upload is ``pending`` while it takes parts, then ``completed`` (with its File), ``cancelled`` or ``expired``.
Every status change is a conditional UPDATE on ``status = 'pending'``, so of two concurrent ``complete`` calls
(or a ``complete`` and a ``cancel``, or a part arriving during either) exactly one moves the upload on.
``complete`` holds the upload in the transient ``completing`` state (shown as ``pending``) while it assembles
the parts into ``files/{file_id}``; on any failure it deletes what it wrote and puts the upload back to
``pending`` so the client can retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request, not_found
from api.files import MAX_EXPIRY, MIN_EXPIRY, initial_status
from api.objects import file_object
from api.streams import multipart_form, save_limited
from tunery import ids
from tunery import uploads as lifecycle
from tunery.db import File, Upload, UploadPart

router = APIRouter()
T = TypeVar("T")

Purpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]  # UPLOAD_PURPOSES


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY, le=MAX_EXPIRY)


class CreateUpload(BaseModel):
    filename: str = Field(min_length=1, max_length=512)
    purpose: Purpose
    bytes: int = Field(ge=1)
    mime_type: str = Field(min_length=1, max_length=256)
    # OpenAI's FileExpirationAfter: the expiration policy of the File made on completion (the Upload itself
    # always expires TUNERY_UPLOAD_EXPIRY_SECONDS after creation).
    expires_after: ExpiresAfter | None = None


class CompleteUpload(BaseModel):
    part_ids: list[str] = Field(min_length=1)
    md5: str | None = None


def upload_object(u: Upload, f: File | None = None) -> dict[str, Any]:
    return {
        "id": u.id,
        "object": "upload",
        "bytes": u.bytes,
        "created_at": u.created_at,
        "filename": u.filename,
        "purpose": u.purpose,
        # `completing` is ours alone (one complete request holds the upload): to clients it is still pending.
        "status": "pending" if u.status == "completing" else u.status,
        "expires_at": u.expires_at,
        "file": file_object(f) if f is not None else None,
    }


def part_object(p: UploadPart) -> dict[str, Any]:
    return {"id": p.id, "object": "upload.part", "created_at": p.created_at, "upload_id": p.upload_id}


def _mine(t: Tenant) -> tuple[Any, ...]:
    return (Upload.organization_id == t.organization_id, Upload.project_id == t.project_id)


def _takes_changes(upload_id: str, t: Tenant, at: int) -> tuple[Any, ...]:
    """The WHERE clause of every transition out of ``pending``: this tenant's upload, pending, not expired."""
    return (Upload.id == upload_id, *_mine(t), Upload.status == "pending", Upload.expires_at > at)


_NOT_PENDING = {
    "completed": "has already been completed",
    "completing": "is being completed by another request",
    "cancelled": "has been cancelled",
    "expired": "has expired",
}


def _refusal(ctx: AppContext, t: Tenant, upload_id: str, action: str) -> APIError | None:
    """Why a transition out of ``pending`` did not apply: an error to raise, or None if it may be tried again."""
    at = lifecycle.now()

    def read() -> Upload | None:
        with ctx.db.session() as s:
            return s.scalar(select(Upload).where(Upload.id == upload_id, *_mine(t)))

    u = read()
    if u is not None and u.status in ("pending", "completing") and u.expires_at <= at:
        # Expire it lazily (the scheduler's sweep may not have come by yet), so the answer says "expired".
        lifecycle.expire(ctx.db, ctx.store, upload_id, at)
        u = read()
    if u is None:
        return not_found(f"No such Upload object: {upload_id}", param="upload_id")
    if u.status == "pending" and u.expires_at > at:
        return None  # a concurrent complete failed and gave the upload back in the meantime
    state = _NOT_PENDING.get(u.status, f"is {u.status}")
    return bad_request(f"Upload {upload_id} {state}: {action}.", code="upload_not_pending")


def _transition(ctx: AppContext, t: Tenant, upload_id: str, action: str, fn: Callable[[Session, int], T | None]) -> T:
    """Run ``fn(session, now)`` (whose first statement is the conditional UPDATE; it returns None when that
    matched nothing) until it applies or the upload's state says why it cannot."""
    for _ in range(5):
        at = lifecycle.now()
        with ctx.db.session() as s:
            out = fn(s, at)
        if out is not None:
            return out
        err = _refusal(ctx, t, upload_id, action)
        if err is not None:
            raise err
    raise APIError(
        409,
        f"Upload {upload_id} is changing concurrently; try again.",
        code="upload_busy",
        headers={"x-should-retry": "true"},
    )


@router.post("/uploads")
def create_upload(body: CreateUpload, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    limit = ctx.settings.max_upload_bytes
    if body.bytes > limit:
        raise bad_request(
            f"Upload is too large: {body.bytes} bytes declared, the limit is {limit} bytes.",
            param="bytes",
            code="upload_too_large",
        )
    filename = body.filename.rsplit("/", 1)[-1]
    if not filename:
        raise bad_request("Invalid filename.", param="filename")
    if body.purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise bad_request(
            f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {filename!r}).", param="filename"
        )
    created = lifecycle.now()
    row = Upload(
        id=ids.upload_id(),
        organization_id=t.organization_id,
        project_id=t.project_id,
        filename=filename,
        purpose=body.purpose,
        bytes=body.bytes,
        mime_type=body.mime_type,
        created_at=created,
        expires_at=created + ctx.settings.upload_expiry_seconds,
        status="pending",
        file_expires_after=body.expires_after.seconds if body.expires_after else None,
        file_id=None,
    )
    with ctx.db.session() as s:
        s.add(row)
    return upload_object(row)


@router.post("/uploads/{upload_id}/parts")
async def add_part(
    upload_id: str, request: Request, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)
) -> dict:
    limit = ctx.settings.max_upload_part_bytes

    def too_large() -> APIError:
        return APIError(413, f"Part is too large: the limit is {limit} bytes.", param="data", code="part_too_large")

    form = await multipart_form(request, limit, too_large, "data", max_fields=8)
    try:
        data = form.get("data")
        if not isinstance(data, UploadFile):
            raise bad_request("Missing required parameter: 'data'.", param="data")
        # Refuse early (before writing anything) when the upload cannot take parts.
        err = await run_in_threadpool(_refusal, ctx, t, upload_id, "no parts can be added")
        if err is not None:
            raise err
        part_id = ids.part_id()
        key = lifecycle.part_key(upload_id, part_id)

        # put_stream removes its temporary object when the part is too large: nothing is left behind.
        try:
            size, _ = await save_limited(ctx.store, key, data.file, limit, too_large)
        except APIError:
            raise
        except Exception:
            # On S3, a cancel or expiry meanwhile aborts the part's multipart upload: say so, not 500.
            err = await run_in_threadpool(_refusal, ctx, t, upload_id, "no parts can be added")
            if err is not None:
                raise err from None
            raise
        if size == 0:
            ctx.store.delete(key)
            raise bad_request("The part is empty.", param="data")
        row = UploadPart(
            id=part_id,
            upload_id=upload_id,
            organization_id=t.organization_id,
            project_id=t.project_id,
            created_at=lifecycle.now(),
            bytes=size,
            object_key=key,
        )

        def register(s: Session, at: int) -> UploadPart | None:
            # Touching the upload row locks it against a concurrent complete/cancel until this commits, so
            # a part is either in the list complete reads or refused here.
            hit = s.execute(update(Upload).where(*_takes_changes(upload_id, t, at)).values(status=Upload.status))
            if hit.rowcount != 1:  # type: ignore[attr-defined]
                return None
            s.add(row)
            return row

        try:
            await run_in_threadpool(_transition, ctx, t, upload_id, "no parts can be added", register)
        except BaseException:
            ctx.store.delete(key)
            raise
        return part_object(row)
    finally:
        await form.close()


@router.post("/uploads/{upload_id}/complete")
def complete_upload(
    upload_id: str, body: CompleteUpload, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)
) -> dict:
    seen: set[str] = set()
    for pid in body.part_ids:
        if pid in seen:
            raise bad_request(f"Part {pid} is listed more than once in part_ids.", param="part_ids")
        seen.add(pid)
    file_id = ids.file_id()
    key = f"files/{file_id}"

    def begin(s: Session, at: int) -> Upload | None:
        hit = s.execute(
            update(Upload).where(*_takes_changes(upload_id, t, at)).values(status="completing", file_id=file_id)
        )
        if hit.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return s.scalar(select(Upload).where(Upload.id == upload_id))

    upload: Upload = _transition(ctx, t, upload_id, "it cannot be completed", begin)
    # This request now holds the upload (`completing`): until it finishes, no part, cancel or complete gets in.
    try:
        with ctx.db.session() as s:
            parts = {p.id: p for p in s.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id))}
        for pid in body.part_ids:
            if pid not in parts:
                raise bad_request(f"Part {pid} does not belong to Upload {upload_id}.", param="part_ids")
        total = sum(parts[pid].bytes for pid in body.part_ids)
        if total != upload.bytes:
            raise _bytes_mismatch(upload, total)

        md5 = hashlib.md5(usedforsecurity=False)
        try:
            # Streamed, or on S3 copied server-side when the parts are large enough (see ObjectStore.compose).
            size, sha = ctx.store.compose(key, [parts[pid].object_key for pid in body.part_ids], md5.update)
            if size != upload.bytes:  # a part changed under us in the store
                raise _bytes_mismatch(upload, size)
            if body.md5 is not None and body.md5.strip().lower() != md5.hexdigest():
                raise bad_request(
                    f"The md5 checksum of the assembled file is {md5.hexdigest()}, not {body.md5!r} as given.",
                    param="md5",
                    code="md5_mismatch",
                )
            created = lifecycle.now()
            f = File(
                id=file_id,
                organization_id=t.organization_id,
                project_id=t.project_id,
                filename=upload.filename,
                purpose=upload.purpose,
                bytes=size,
                sha256=sha,
                object_key=key,
                created_at=created,
                expires_at=created + upload.file_expires_after if upload.file_expires_after else None,
                status=initial_status(upload.purpose),
                status_details=None,
            )
            with ctx.db.session() as s:
                done = s.execute(
                    update(Upload)
                    .where(Upload.id == upload_id, Upload.status == "completing", Upload.file_id == file_id)
                    .values(status="completed")
                )
                if done.rowcount != 1:  # type: ignore[attr-defined]  # given up as stale by the expiry sweep
                    raise bad_request(f"Upload {upload_id} has expired.", code="upload_not_pending")
                s.add(f)
                s.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
                upload.status = "completed"
        except BaseException:
            ctx.store.delete(key)
            raise
    except BaseException:
        with ctx.db.session() as s:  # give the upload back so the client can fix the request and retry
            s.execute(
                update(Upload)
                .where(Upload.id == upload_id, Upload.status == "completing", Upload.file_id == file_id)
                .values(status="pending", file_id=None)
            )
        raise
    # Every part, listed or not, has served its purpose.
    lifecycle.discard(ctx.store, upload_id, [p.object_key for p in parts.values()])
    ctx.wake_scheduler()  # it validates new training files
    return upload_object(upload, f)


def _bytes_mismatch(upload: Upload, got: int) -> APIError:
    return bad_request(
        f"The parts add up to {got} bytes, but the Upload was created with bytes={upload.bytes}.",
        param="part_ids",
        code="upload_bytes_mismatch",
    )


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    def cancel(s: Session, at: int) -> tuple[Upload, list[str]] | None:
        hit = s.execute(update(Upload).where(*_takes_changes(upload_id, t, at)).values(status="cancelled"))
        if hit.rowcount != 1:  # type: ignore[attr-defined]
            return None
        keys = lifecycle.drop_parts(s, upload_id)
        row = s.scalar(select(Upload).where(Upload.id == upload_id))
        assert row is not None
        return row, keys

    upload, keys = _transition(ctx, t, upload_id, "it cannot be cancelled", cancel)
    lifecycle.discard(ctx.store, upload_id, keys)
    return upload_object(upload)
