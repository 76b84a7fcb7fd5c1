"""One streamed generation of the embedded engine (serving/engine.py): text deltas, then one ``Generation``, handed
from the engine's model thread to the caller's through a queue."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.protocol import Generation


@dataclass
class Failed:
    """The error a generation ended with, for the stream's consumer to raise."""

    error: BaseException


class Stream:
    """One streamed generation: an iterator of text deltas (str), then one Generation.

    Lazy: the request is checked (and its model loaded) on the first ``next()``, in the caller's thread, which raises
    EngineError for a bad request. The tokens come from the engine's model thread through a queue. ``close()`` may be
    called from any thread, also while another thread waits in ``next()``: the generation stops at its next token
    and the waiting ``next()`` ends the iteration. (Not a generator: closing a generator that another thread is
    running is not safe in CPython 3.11, and crashed the interpreter.) Dropping the stream closes it."""

    _CLOSED = object()

    def __init__(
        self,
        prepare: Callable[[], Any],
        start: Callable[[Any, threading.Event, Callable[[object], None]], None],
    ):
        self._prepare = prepare
        self._start = start
        self._cancel = threading.Event()
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._started = False
        self._done = False
        self._closed = False  # by its consumer (the engine's close() only cancels: the consumer then hears why)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str | Generation:
        if self._done or self._closed:
            raise StopIteration
        if not self._started:
            self._started = True
            try:
                self._start(self._prepare(), self._cancel, self._items.put)
            except BaseException:  # a bad request, or an engine that is shutting down: nothing will come
                self._done = True
                raise
        item = self._items.get()
        if item is Stream._CLOSED:
            self._done = True
            raise StopIteration
        if isinstance(item, Failed):
            self._done = True
            raise item.error
        assert isinstance(item, str | Generation)
        self._done = isinstance(item, Generation)
        return item

    def close(self) -> None:
        """Stop the generation at its next token; a thread waiting in ``next()`` gets the end of the iteration."""
        self._closed = True
        self._cancel.set()
        self._items.put(Stream._CLOSED)

    def __del__(self) -> None:
        self._cancel.set()
