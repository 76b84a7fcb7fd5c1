"""Copy a request's uploaded file into the object store in chunks, refusing it past a size limit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool

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
