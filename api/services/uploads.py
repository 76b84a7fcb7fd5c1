"""Uploads: a large file sent in parts (each streamed to the object store), assembled into a File.

An upload is ``pending`` while it takes parts, then ``completed`` (with its File), ``cancelled`` or ``expired``.
Every status change is a conditional UPDATE on ``status = 'pending'``, so of two concurrent ``complete`` calls
(or a ``complete`` and a ``cancel``, or a part arriving during either) exactly one moves the upload on.
``complete`` holds the upload in the transient ``completing`` state (shown as ``pending``) while it assembles
the parts into ``files/{file_id}``, renewing its hold as it goes; on any failure it deletes what it wrote and puts
the upload back to ``pending`` so the client can retry. A hold nobody renews (the process died mid-complete) is
given back after ``TUNERY_UPLOAD_COMPLETING_STALE_SECONDS`` (tunery/uploads.py), so the retry goes through then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import Conflict, InvalidRequest, NotFound, ServiceError, TooLarge
from api.protocol.files import CompleteUploadRequest, CreateUploadRequest
from api.protocol.files import Upload as UploadObject
from api.protocol.files import UploadPart as UploadPartObject
from api.services.files import (
    check_training_filename,
    clean_filename,
    file_object,
    initial_status,
    put_limited,
    storage_quota_exceeded,
)
from tunery import ids, quotas
from tunery import uploads as lifecycle
from tunery.audit import Actor, EventType, record
from tunery.db import File, Upload, UploadPart

T = TypeVar("T")


def upload_object(u: Upload, f: File | None = None) -> UploadObject:
    return UploadObject(
        id=u.id,
        bytes=u.bytes,
        created_at=u.created_at,
        filename=u.filename,
        purpose=u.purpose,  # type: ignore[arg-type]  # written from CreateUploadRequest.purpose
        # `completing` is ours alone (one complete request holds the upload): to clients it is still pending.
        status="pending" if u.status == "completing" else u.status,  # type: ignore[arg-type]
        expires_at=u.expires_at,
        file=file_object(f) if f is not None else None,
    )


def part_object(p: UploadPart) -> UploadPartObject:
    return UploadPartObject(id=p.id, created_at=p.created_at, upload_id=p.upload_id)


def part_too_large(limit: int) -> TooLarge:
    return TooLarge(f"Part is too large: the limit is {limit} bytes.", param="data", code="part_too_large")


def past_declared_bytes(upload_id: str, declared: int, used: int) -> TooLarge:
    """A part that would take an upload's parts past the ``bytes`` it was created with: refused as it arrives (413,
    like a part over the part limit), not left for ``complete`` to find."""
    return TooLarge(
        f"The part does not fit in Upload {upload_id}: it was created with bytes={declared}, and its parts hold "
        f"{used} bytes already, so at most {max(declared - used, 0)} more fit.",
        param="data",
        code="upload_bytes_exceeded",
    )


@dataclass(frozen=True)
class PartRoom:
    """How many bytes the next part of an upload may have, and the error past them."""

    limit: int
    too_large: Callable[[], TooLarge]


_NOT_PENDING = {
    "completed": "has already been completed",
    "completing": "is being completed by another request",
    "cancelled": "has been cancelled",
    "expired": "has expired",
}


class UploadService:
    """The caller's uploads. Blocking (database and object store): run it off the event loop."""

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor  # who the audit log says acted

    def _record(self, s: Session, type: EventType, resource_id: str, details: dict[str, Any] | None = None) -> None:
        t = self.tenant
        record(
            s,
            type,
            self.actor,
            organization_id=t.organization_id,
            project_id=t.project_id,
            resource_id=resource_id,
            details=details,
        )

    def _mine(self) -> tuple[Any, ...]:
        t = self.tenant
        return (Upload.organization_id == t.organization_id, Upload.project_id == t.project_id)

    def _takes_changes(self, upload_id: str, at: int) -> tuple[Any, ...]:
        """The WHERE clause of every transition out of ``pending``: this tenant's upload, pending, not expired."""
        return (Upload.id == upload_id, *self._mine(), Upload.status == "pending", Upload.expires_at > at)

    def refusal(self, upload_id: str, action: str) -> ServiceError | None:
        """Why a transition out of ``pending`` did not apply: an error to raise, or None if it may be tried again."""
        ctx, at = self.ctx, lifecycle.now()

        def read() -> Upload | None:
            with ctx.db.session() as s:
                return s.scalar(select(Upload).where(Upload.id == upload_id, *self._mine()))

        u = read()
        if u is not None and u.status in ("pending", "completing") and u.expires_at <= at:
            # Expire it lazily (the scheduler's sweep may not have come by yet), so the answer says "expired".
            lifecycle.expire(ctx.db, ctx.store, upload_id, at)
            u = read()
        stale = ctx.settings.upload_completing_stale_seconds
        if u is not None and u.status == "completing" and lifecycle.give_back_stale(ctx.db, ctx.store, stale, u.id, at):
            u = read()  # its complete request died (the sweep may not have come by yet): pending again
        if u is None:
            return NotFound(f"No such Upload object: {upload_id}", param="upload_id")
        if u.status == "pending" and u.expires_at > at:
            return None  # a concurrent complete failed and gave the upload back in the meantime
        state = _NOT_PENDING.get(u.status, f"is {u.status}")
        if u.status == "completing":
            state += f" (if that request is gone, try again in {stale} s)"
        return InvalidRequest(f"Upload {upload_id} {state}: {action}.", code="upload_not_pending")

    def _transition(self, upload_id: str, action: str, fn: Callable[[Session, int], T | None]) -> T:
        """Run ``fn(session, now)`` (whose first statement is the conditional UPDATE; it returns None when that
        matched nothing) until it applies or the upload's state says why it cannot."""
        for _ in range(5):
            at = lifecycle.now()
            with self.ctx.db.session() as s:
                out = fn(s, at)
            if out is not None:
                return out
            err = self.refusal(upload_id, action)
            if err is not None:
                raise err
        raise Conflict(f"Upload {upload_id} is changing concurrently; try again.", code="upload_busy")

    def create(self, req: CreateUploadRequest) -> UploadObject:
        t, limit = self.tenant, self.ctx.settings.max_upload_bytes
        if req.bytes > limit:
            raise InvalidRequest(
                f"Upload is too large: {req.bytes} bytes declared, the limit is {limit} bytes.",
                param="bytes",
                code="upload_too_large",
            )
        filename = clean_filename(req.filename, "filename")
        check_training_filename(req.purpose, filename, "filename")
        created = lifecycle.now()
        row = Upload(
            id=ids.upload_id(),
            organization_id=t.organization_id,
            project_id=t.project_id,
            filename=filename,
            purpose=req.purpose,
            bytes=req.bytes,
            mime_type=req.mime_type,
            created_at=created,
            expires_at=created + self.ctx.settings.upload_expiry_seconds,
            status="pending",
            file_expires_after=req.expires_after.seconds if req.expires_after else None,
            file_id=None,
        )

        def admit(s: Session) -> None:
            # The declared bytes count against the project's stored-bytes quota from now on (tunery/quotas.py).
            quotas.admit_bytes(s, self.ctx.settings, t.organization_id, t.project_id, req.bytes)
            s.add(row)
            details = {"data": {"filename": filename, "purpose": req.purpose, "bytes": req.bytes}}
            self._record(s, EventType.UPLOAD_CREATED, row.id, details)

        try:
            self.ctx.db.transaction(admit)
        except quotas.StorageQuotaExceeded as e:
            raise storage_quota_exceeded(e, "bytes") from None
        return upload_object(row)

    def _used(self, s: Session, upload_id: str) -> int:
        """The bytes of an upload's parts so far."""
        used = s.scalar(select(func.sum(UploadPart.bytes)).where(UploadPart.upload_id == upload_id))
        return int(used or 0)

    def part_room(self, upload_id: str) -> PartRoom:
        """What the next part may hold: refused at once (404, 400) when the upload cannot take parts, or when its
        parts already hold the ``bytes`` it was created with; else up to the part limit or what is left, the less."""
        err = self.refusal(upload_id, "no parts can be added")
        if err is not None:
            raise err
        with self.ctx.db.session() as s:
            declared = int(s.scalar(select(Upload.bytes).where(Upload.id == upload_id)) or 0)
            used = self._used(s, upload_id)
        part_limit = self.ctx.settings.max_upload_part_bytes
        if used >= declared:
            raise past_declared_bytes(upload_id, declared, used)
        if declared - used < part_limit:
            return PartRoom(declared - used, lambda: past_declared_bytes(upload_id, declared, used))
        return PartRoom(part_limit, lambda: part_too_large(part_limit))

    def add_part(self, upload_id: str, data: BinaryIO) -> UploadPartObject:
        t = self.tenant
        # Refuse early (before writing anything) when the upload cannot take parts, or not this many bytes.
        room = self.part_room(upload_id)
        part_id = ids.part_id()
        key = lifecycle.part_key(upload_id, part_id)

        # put_stream removes its temporary object when the part is too large: nothing is left behind.
        try:
            size, _ = put_limited(self.ctx.store, key, data, room.limit, room.too_large)
        except ServiceError:
            raise
        except Exception:
            # On S3, a cancel or expiry meanwhile aborts the part's multipart upload: say so, not 500.
            err = self.refusal(upload_id, "no parts can be added")
            if err is not None:
                raise err from None
            raise
        if size == 0:
            self.ctx.store.delete(key)
            raise InvalidRequest("The part is empty.", param="data")
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
            hit = s.execute(update(Upload).where(*self._takes_changes(upload_id, at)).values(status=Upload.status))
            if hit.rowcount != 1:  # type: ignore[attr-defined]
                return None
            # Parts registered since part_room count too: with the row locked, the sum is the last word.
            declared = int(s.scalar(select(Upload.bytes).where(Upload.id == upload_id)) or 0)
            used = self._used(s, upload_id)
            if used + size > declared:
                raise past_declared_bytes(upload_id, declared, used)
            s.add(row)
            return row

        try:
            self._transition(upload_id, "no parts can be added", register)
        except BaseException:
            self.ctx.store.delete(key)
            raise
        return part_object(row)

    def complete(self, upload_id: str, req: CompleteUploadRequest) -> UploadObject:
        ctx = self.ctx
        seen: set[str] = set()
        for pid in req.part_ids:
            if pid in seen:
                raise InvalidRequest(f"Part {pid} is listed more than once in part_ids.", param="part_ids")
            seen.add(pid)
        file_id = ids.file_id()

        def begin(s: Session, at: int) -> Upload | None:
            hit = s.execute(
                update(Upload)
                .where(*self._takes_changes(upload_id, at))
                .values(status="completing", file_id=file_id, completing_at=at)
            )
            if hit.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return s.scalar(select(Upload).where(Upload.id == upload_id))

        upload: Upload = self._transition(upload_id, "it cannot be completed", begin)
        # This request now holds the upload (`completing`): until it finishes, no part, cancel or complete gets in.
        # It renews its hold while it works; a hold left by a dead process is given back (tunery/uploads.py).
        with lifecycle.holding(ctx.db, upload_id, file_id, ctx.settings.upload_completing_stale_seconds):
            f, parts = self._assemble(upload, file_id, req)
        # Every part, listed or not, has served its purpose.
        lifecycle.discard(ctx.store, upload_id, [p.object_key for p in parts.values()])
        ctx.wake_scheduler()  # it validates new training files
        return upload_object(upload, f)

    def _assemble(self, upload: Upload, file_id: str, req: CompleteUploadRequest) -> tuple[File, dict[str, UploadPart]]:
        """Assemble the file of the upload this request holds and record it; on failure give the upload back."""
        ctx, t, upload_id, key = self.ctx, self.tenant, upload.id, f"files/{file_id}"
        try:
            with ctx.db.session() as s:
                parts = {p.id: p for p in s.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id))}
            for pid in req.part_ids:
                if pid not in parts:
                    raise InvalidRequest(f"Part {pid} does not belong to Upload {upload_id}.", param="part_ids")
            total = sum(parts[pid].bytes for pid in req.part_ids)
            if total != upload.bytes:
                raise _bytes_mismatch(upload, total)

            md5 = hashlib.md5(usedforsecurity=False)
            try:
                # Streamed, or on S3 copied server-side when the parts are large enough (see ObjectStore.compose).
                size, sha = ctx.store.compose(key, [parts[pid].object_key for pid in req.part_ids], md5.update)
                if size != upload.bytes:  # a part changed under us in the store
                    raise _bytes_mismatch(upload, size)
                if req.md5 is not None and req.md5.strip().lower() != md5.hexdigest():
                    raise InvalidRequest(
                        f"The md5 checksum of the assembled file is {md5.hexdigest()}, not {req.md5!r} as given.",
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
                    if done.rowcount != 1:  # type: ignore[attr-defined]  # expired, or given back as stale
                        raise self._lost_hold(upload_id)
                    s.add(f)
                    s.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
                    self._record(s, EventType.UPLOAD_COMPLETED, upload_id, {"data": {"file_id": file_id}})
                    details = {"data": {"filename": f.filename, "purpose": f.purpose, "bytes": size}}
                    self._record(s, EventType.FILE_CREATED, file_id, {**details, "upload_id": upload_id})
                    upload.status = "completed"
            except BaseException:
                ctx.store.delete(key)
                raise
        except BaseException:
            with ctx.db.session() as s:  # give the upload back so the client can fix the request and retry
                s.execute(
                    update(Upload)
                    .where(Upload.id == upload_id, Upload.status == "completing", Upload.file_id == file_id)
                    .values(status="pending", file_id=None, completing_at=None)
                )
            raise
        return f, parts

    def _lost_hold(self, upload_id: str) -> ServiceError:
        """Why a complete request no longer holds its upload: it expired, or this request was silent so long that
        the upload was given back (and may be completed again)."""
        with self.ctx.db.session() as s:
            status = s.scalar(select(Upload.status).where(Upload.id == upload_id))
        if status == "expired":
            return InvalidRequest(f"Upload {upload_id} has expired.", code="upload_not_pending")
        return Conflict(
            f"Upload {upload_id} was given back while this request completed it; try again.", code="upload_busy"
        )

    def cancel(self, upload_id: str) -> UploadObject:
        def cancel(s: Session, at: int) -> tuple[Upload, list[str]] | None:
            hit = s.execute(update(Upload).where(*self._takes_changes(upload_id, at)).values(status="cancelled"))
            if hit.rowcount != 1:  # type: ignore[attr-defined]
                return None
            keys = lifecycle.drop_parts(s, upload_id)
            row = s.scalar(select(Upload).where(Upload.id == upload_id))
            assert row is not None
            self._record(s, EventType.UPLOAD_CANCELLED, upload_id)
            return row, keys

        upload, keys = self._transition(upload_id, "it cannot be cancelled", cancel)
        lifecycle.discard(self.ctx.store, upload_id, keys)
        return upload_object(upload)


def _bytes_mismatch(upload: Upload, got: int) -> InvalidRequest:
    return InvalidRequest(
        f"The parts add up to {got} bytes, but the Upload was created with bytes={upload.bytes}.",
        param="part_ids",
        code="upload_bytes_mismatch",
    )
