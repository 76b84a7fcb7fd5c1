"""Serialized API objects kept between requests, each valid for one version of the rows it was built from.

A read route spends most of its time turning rows into OpenAI's objects (the ORM, JSON columns, pydantic) and very
little finding which rows to show. Under load, 200 clients listing and getting jobs spent about 2 ms of the server's
one core per request there. So the read routes find the rows with a narrow query (ids and versions) and take each
object's JSON from here when it was built from the same version of its row; only the others are loaded and built.

A key is what decides the object's JSON, read with the ids: for a job, its id and its ``version`` (bumped by every
ORM write of the row, the optimistic lock: tunery/db/models.py); for an event, its id (events are never changed); for
a file or a model, the few columns its object shows, whole. So a change made by any process (another API replica,
the scheduler, a trainer's report) is seen at once, with no invalidation to send. Objects whose JSON depends on more
than their row (a queued job's queue position) are not kept. Bounded: the least recently used entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from pydantic import BaseModel

DEFAULT_ENTRIES = 50_000  # about 1 KB each (a job object): tens of MB at most


class JsonCache:
    """``key -> JSON bytes``, thread-safe, least recently used out first past ``entries``."""

    def __init__(self, entries: int = DEFAULT_ENTRIES):
        self.entries = entries
        self._data: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._data.get(key)
            if data is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if self.entries <= 0:
            return
        with self._lock:
            self._data[key] = data
            self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)

    def json(self, key: Hashable, build: Callable[[], BaseModel]) -> bytes:
        """The JSON kept for ``key``, or ``build()``'s, kept."""
        data = self.get(key)
        if data is None:
            data = build().model_dump_json().encode()
            self.put(key, data)
        return data

    def __len__(self) -> int:
        return len(self._data)
