"""Uploaded files: read a multipart request and copy its file into the object store, within a size limit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request

from api.errors import APIError
from tunery.storage import CHUNK, ObjectStore


async def save_limited(
    store: ObjectStore, key: str, source: BinaryIO, limit: int, too_large: Callable[[], APIError]
) -> tuple[int, str]:
    """(bytes, sha256) of what was stored. Past ``limit`` it raises ``too_large()``; the store's atomic write
    leaves nothing behind then."""

    def chunks() -> Iterator[bytes]:
        total = 0
        while chunk := source.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_large()
            yield chunk

    return await run_in_threadpool(store.put_stream, key, chunks())


async def multipart_form(
    request: Request, limit: int, too_large: Callable[[], APIError], param: str, max_fields: int
) -> FormData:
    """The request's multipart form, refused early when its declared length is already past ``limit``.

    Starlette spools file parts to disk past 1 MB, so an upload is never held whole in memory.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise too_large()
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except Exception as e:  # a malformed multipart body
        raise APIError(400, f"Could not parse the multipart form: {e}", param=param) from None
