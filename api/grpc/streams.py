"""A client stream's bytes as the blocking file object the services read (``FileService.create`` streams it to the
object store from a thread): each read takes the next message from the event loop, so memory holds one message at
a time, whatever the file's size."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

# A client that stops sending for this long has its upload refused (the thread reading it is freed).
IDLE_SECONDS = 300.0


class StreamReader(io.RawIOBase):
    """A readable binary stream over ``next_chunk`` (a coroutine: the next bytes, or None at the end), read from a
    thread while ``loop`` runs the call."""

    def __init__(self, next_chunk: Callable[[], Coroutine[Any, Any, bytes | None]], loop: asyncio.AbstractEventLoop):
        super().__init__()
        self._next = next_chunk
        self._loop = loop
        self._buffer = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._done:
                return 0
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result(timeout=IDLE_SECONDS)
            if chunk is None:
                self._done = True
                return 0
            self._buffer = memoryview(chunk)
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def chunks_of(messages: AsyncIterator[bytes]) -> Callable[[], Coroutine[Any, Any, bytes | None]]:
    """``next_chunk`` for :class:`StreamReader` over an async iterator of byte strings."""

    async def next_chunk() -> bytes | None:
        return await anext(messages, None)

    return next_chunk
