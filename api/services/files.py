"""Files: store an uploaded file (streamed to the object store within a size limit), list, retrieve, delete,
read back, and Tunery's validation report and presigned URL of a file."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import BindParameter, ColumnElement, Integer, String, bindparam, select
from sqlalchemy.orm import Session

from api.context import BOUND_TENANT, AppContext, BoundTenant, Tenant
from api.encoded import EncodedPage, Encoding
from api.errors import InvalidRequest, NotFound, TooLarge, Unavailable
from api.pagination import AnyRow, Pager
from api.protocol.files import (
    CreateFileRequest,
    FileDeleted,
    FileList,
    FileObject,
    FileURL,
    FileValidationReport,
    ListFilesRequest,
)
from tunery import audit, ids, quotas
from tunery import files as lifecycle
from tunery.audit import Actor, EventType
from tunery.db.models import RESULTS_PURPOSE, File
from tunery.files import live, report_key
from tunery.storage import CHUNK, ObjectNotFound, ObjectStore

log = logging.getLogger("tunery.api.files")


# The columns a file's object shows (:func:`file_object`), read whole by the JSON reads: they are its cache key.
FILE_COLUMNS = (
    File.id,
    File.bytes,
    File.created_at,
    File.expires_at,
    File.filename,
    File.purpose,
    File.status,
    File.status_details,
)


def live_files(t: Tenant | BoundTenant, at: int | BindParameter[int] | None = None) -> tuple[ColumnElement[bool], ...]:
    """The condition a file row of the tenant that has not expired at ``at`` (now by default) meets; a
    :class:`BoundTenant` and a bound ``at`` for a statement built once."""
    return (File.organization_id == t.organization_id, File.project_id == t.project_id, live(at))


# The reads clients poll, built once (api/pagination.py's Pager) and run without the ORM (Database.read): the tenant's
# live files (bound to FileService._params), a page of them (with a purpose or not, newest or oldest first), or one.
_LISTED = select(*FILE_COLUMNS).where(*live_files(BOUND_TENANT, bindparam("now", type_=Integer())))
_PAGES = {
    (purpose, newest_first): Pager(
        File,
        _LISTED.where(File.purpose == bindparam("purpose", type_=String())) if purpose else _LISTED,
        newest_first=newest_first,
        columns=True,
    )
    for purpose in (False, True)
    for newest_first in (False, True)
}
_FILE = _LISTED.where(File.id == bindparam("file_id", type_=String()))


def file_object(f: File | AnyRow) -> FileObject:
    """A file's object, from its row (or its :data:`FILE_COLUMNS`)."""
    return FileObject(
        id=f.id,
        bytes=f.bytes,
        created_at=f.created_at,
        expires_at=f.expires_at,
        filename=f.filename,
        purpose=f.purpose,  # type: ignore[arg-type]  # one of FilePurpose: the column is written from it
        status=f.status,  # type: ignore[arg-type]
        status_details=f.status_details,
    )


def find_file(s: Session, t: Tenant, file_id: str) -> File:
    """One of the tenant's files; NotFound when there is none, or when it has expired (gone at once, before the
    scheduler's sweep deletes it: tunery/files.py)."""
    f = s.scalar(select(File).where(File.id == file_id, *live_files(t)))
    if f is None:
        raise file_not_found(file_id)
    return f


def file_not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


def initial_status(purpose: str) -> str:
    """Training files are validated by the scheduler (uploaded -> processed | error); others are ready at once."""
    return "uploaded" if purpose == "fine-tune" else "processed"


# Characters a stored file name may not hold: C0 and C1 controls (CR/LF would end a header line of its download),
# DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_filename(name: str | None, param: str, default: str = "upload") -> str:
    """The name a file is stored under, for ``/v1/files`` and ``/v1/uploads`` alike: the client's, without any
    folder, at most 512 characters; a name with control characters is a 400 (``invalid_filename``)."""
    name = (name or default).replace("\\", "/").rsplit("/", 1)[-1][:512]
    if _CONTROL.search(name):
        raise InvalidRequest(
            "Invalid filename: it may not contain control characters (such as CR or LF).",
            param=param,
            code="invalid_filename",
        )
    if not name.strip(" ."):
        raise InvalidRequest("Invalid filename.", param=param, code="invalid_filename")
    return name


def check_training_filename(purpose: str, filename: str, param: str) -> None:
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise InvalidRequest(
            f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {filename!r}).", param=param
        )


def first_chunk_ahead(chunks: Iterable[bytes], file_id: str) -> Iterator[bytes]:
    """``chunks`` with the first one read now, before any byte of the answer is sent: an object missing from the
    store is a clean 503 (``file_content_missing``) instead of a 200 whose stream breaks."""
    it = iter(chunks)
    try:
        first = next(it, b"")
    except ObjectNotFound:
        log.error("the content of file %s is missing from the object store", file_id)
        raise Unavailable(
            f"The content of file {file_id} is missing from the object store; ask the operator to restore it.",
            param="id",
            code="file_content_missing",
        ) from None
    return itertools.chain([first], it)


def file_too_large(limit: int) -> TooLarge:
    return TooLarge(f"File is too large: the limit is {limit} bytes.", param="file", code="file_too_large")


def put_limited(
    store: ObjectStore, key: str, source: BinaryIO, limit: int, too_large: Callable[[], Exception]
) -> tuple[int, str]:
    """Copy ``source`` into the store at ``key``: (bytes, sha256) of what was stored. Past ``limit`` it raises
    ``too_large()``; the store's atomic write leaves nothing behind then."""

    def chunks() -> Iterator[bytes]:
        total = 0
        while chunk := source.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_large()
            yield chunk

    return store.put_stream(key, chunks())


def spooled_size(data: BinaryIO) -> int:
    """The bytes of an uploaded file the multipart parser has spooled (to memory or disk), read from where it is."""
    at = data.tell()
    size = data.seek(0, 2) - at
    data.seek(at)
    return size


def storage_quota_exceeded(e: quotas.StorageQuotaExceeded, param: str) -> InvalidRequest:
    """A 400, not a 429: waiting does not make room (only deleting files does), and the SDK retries a 429."""
    return InvalidRequest(str(e), param=param, code="storage_quota_exceeded")


def reserve_storage(ctx: AppContext, t: Tenant, size: int, param: str) -> str | None:
    """Room for ``size`` bytes in the project's stored-bytes quota (tunery/quotas.py): the reservation to release
    once the file's row is written, None when the project has no quota; the 400 ``storage_quota_exceeded`` past it."""
    try:
        return ctx.db.transaction(
            lambda s: quotas.reserve_bytes(s, ctx.settings, t.organization_id, t.project_id, size)
        )
    except quotas.StorageQuotaExceeded as e:
        raise storage_quota_exceeded(e, param) from None


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


@dataclass(frozen=True)
class FileContent:
    """A file's bytes as they are served: a stream of chunks, its length and media type."""

    chunks: Iterable[bytes]
    size: int
    media_type: str
    filename: str


class FileService:
    """The caller's files. Blocking (database and object store): run it off the event loop."""

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor  # who the audit log says acted

    def _get(self, file_id: str) -> File:
        with self.ctx.db.session() as s:
            return find_file(s, self.tenant, file_id)

    def create(self, req: CreateFileRequest, data: BinaryIO) -> FileObject:
        """Store ``data`` as a new file. Training files are then validated by the scheduler (status ``uploaded``
        until it has)."""
        t, limit = self.tenant, self.ctx.settings.max_file_bytes
        filename = clean_filename(req.filename, "file")
        check_training_filename(req.purpose, filename, "file")
        created = int(time.time())
        file_id = ids.file_id()
        key = f"files/{file_id}"
        # The project's stored-bytes quota holds the file's room before a byte of it is stored.
        reservation = reserve_storage(self.ctx, t, spooled_size(data), "file")
        try:
            size, sha = put_limited(self.ctx.store, key, data, limit, lambda: file_too_large(limit))
        except BaseException:
            self._release(reservation)
            raise
        if size == 0:
            self.ctx.store.delete(key)
            self._release(reservation)
            raise InvalidRequest("The file is empty.", param="file")
        row = File(
            id=file_id,
            organization_id=t.organization_id,
            project_id=t.project_id,
            filename=filename,
            purpose=req.purpose,
            bytes=size,
            sha256=sha,
            object_key=key,
            created_at=created,
            expires_at=created + req.expires_after.seconds if req.expires_after else None,
            status=initial_status(req.purpose),
            status_details=None,
        )
        try:
            with self.ctx.db.session() as s:
                s.add(row)
                quotas.release(s, reservation)
                audit.record(
                    s,
                    EventType.FILE_CREATED,
                    self.actor,
                    organization_id=t.organization_id,
                    project_id=t.project_id,
                    resource_id=file_id,
                    details={"data": {"filename": filename, "purpose": req.purpose, "bytes": size}},
                )
        except Exception:
            self.ctx.store.delete(key)
            self._release(reservation)
            raise
        self.ctx.wake_scheduler()  # it validates new training files
        return file_object(row)

    def _release(self, reservation: str | None) -> None:
        if reservation is not None:
            with self.ctx.db.session() as s:
                quotas.release(s, reservation)

    def list(self, req: ListFilesRequest) -> FileList:
        rows, more = self._page(req)
        return FileList.of([file_object(r) for r in rows], more)

    def retrieve(self, file_id: str) -> FileObject:
        return file_object(self._row(file_id))

    # ---- the same reads encoded (JSON for REST, protobuf for gRPC), through the cache of api/encoded.py, keyed by
    # ---- what a file's object shows
    def list_encoded(self, req: ListFilesRequest, encoding: Encoding) -> EncodedPage:
        """:meth:`list`, encoded."""
        rows, more = self._page(req)
        items = self.ctx.encoded.encoded_page(
            encoding, "files", rows, lambda: [self._encoded(r, encoding) for r in rows]
        )
        return EncodedPage(
            [r[0] for r in rows], items, more
        )  # File.id, FILE_COLUMNS' first (by index: a Row's attribute is looked up in Python)

    def retrieve_encoded(self, file_id: str, encoding: Encoding) -> bytes:
        """:meth:`retrieve`, encoded."""
        return self._encoded(self._row(file_id), encoding)

    def _page(self, req: ListFilesRequest) -> tuple[Sequence[AnyRow], bool]:
        """A page of the tenant's live files' :data:`FILE_COLUMNS`."""
        pager = _PAGES[bool(req.purpose), req.order == "desc"]
        with self.ctx.db.read() as conn:
            return pager.page(conn, self._params(purpose=req.purpose), after=req.after, limit=req.limit)

    def _row(self, file_id: str) -> AnyRow:
        """One of the tenant's live files' :data:`FILE_COLUMNS`; NotFound as :func:`find_file`."""
        with self.ctx.db.read() as conn:
            row = conn.execute(_FILE, self._params(file_id=file_id)).first()
        if row is None:
            raise file_not_found(file_id)
        return row

    def _params(self, **values: str | None) -> dict[str, object]:
        """The values of the statements built once below: the tenant, now (for :func:`live`), and ``values``."""
        return {**self.tenant.params(), "now": int(time.time()), **values}

    def _encoded(self, row: AnyRow, encoding: Encoding) -> bytes:
        return self.ctx.encoded.encoded(encoding, ("file", *row), lambda: file_object(row))

    def delete(self, file_id: str) -> FileDeleted:
        # The same deletion as the expiry sweep's (tunery/files.py), of one of the tenant's files that has not expired.
        t = self.tenant
        mine = live_files(t)

        def deleted(s: Session) -> None:
            audit.record(
                s,
                EventType.FILE_DELETED,
                self.actor,
                organization_id=t.organization_id,
                project_id=t.project_id,
                resource_id=file_id,
            )

        if not lifecycle.delete_file(self.ctx.db, self.ctx.store, file_id, *mine, on_deleted=deleted):
            raise file_not_found(file_id)
        return FileDeleted(id=file_id, deleted=True)

    def content(self, file_id: str) -> FileContent:
        """The file's bytes as stored; a job's results file (purpose ``fine-tune-results``) base64-encoded, as OpenAI
        serves it, so code written for OpenAI (``base64.b64decode(client.files.content(id).read())``) reads it."""
        f = self._get(file_id)
        chunks: Iterable[bytes] = first_chunk_ahead(self.ctx.store.iter_chunks(f.object_key), file_id)
        size, media = f.bytes, "text/csv" if f.filename.endswith(".csv") else "application/octet-stream"
        if f.purpose == RESULTS_PURPOSE:
            chunks, size, media = base64_chunks(chunks), 4 * ((f.bytes + 2) // 3), "text/plain"
        return FileContent(chunks, size, media, f.filename)

    def validation(self, file_id: str, model: str | None = None) -> FileValidationReport:
        """The validation report of a training file. Without ``model``: the report made at upload; with it: the
        one a job on that base model made when it validated its files."""
        f = self._get(file_id)
        if f.purpose != "fine-tune":
            raise InvalidRequest(
                f"File {file_id} has purpose {f.purpose!r}: only fine-tune files are validated.", param="id"
            )
        if model:
            missing = NotFound(
                f"No report of file {file_id} for model {model!r}: one is made when a job on that model "
                "validates the file.",
                param="model",
            )
            # Only this server's base models have reports; any other name is never looked up (as a key it could be
            # longer than the object store takes: a file name once percent-encoded, an S3 key).
            if model not in self.ctx.settings.base_model_paths():
                raise missing
            try:
                stored = self.ctx.store.get_bytes(report_key(file_id, model))
            except ObjectNotFound:
                raise missing from None
            return FileValidationReport.model_validate(json.loads(stored))
        if f.status == "uploaded":
            return FileValidationReport(file_id=file_id, status="pending")
        try:
            return FileValidationReport.model_validate(json.loads(self.ctx.store.get_bytes(report_key(file_id))))
        except ObjectNotFound:
            return FileValidationReport.model_validate(
                {"file_id": file_id, "status": f.status, "status_details": f.status_details}
            )

    def url(self, file_id: str) -> FileURL:
        """A presigned URL that downloads the file straight from the object store (S3), without an API key, until
        ``expires_at`` (``TUNERY_S3_PRESIGN_SECONDS``)."""
        f = self._get(file_id)
        seconds = self.ctx.settings.s3_presign_seconds
        expires_at = int(time.time()) + seconds
        url = self.ctx.store.presigned_url(f.object_key, expires_in=seconds, filename=f.filename)
        if url is None:
            raise InvalidRequest(
                "This server's object store has no presigned URLs (a local folder): use /v1/files/{id}/content.",
                param="file_id",
                code="presigned_urls_unsupported",
            )
        return FileURL(id=file_id, url=url, expires_at=expires_at)
