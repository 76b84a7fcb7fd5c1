"""Encoded API objects (JSON for REST, protobuf for gRPC) kept between requests, each valid for one version of the
rows it was built from.

A read spends most of its time turning rows into OpenAI's objects (the ORM, JSON columns, pydantic) and encoding
them, and very little finding which rows to show. Under load, 200 clients listing and getting jobs spent about 2 ms
of the server's one core per request there. So the reads find the rows with a narrow query (ids and versions) and
take each object's encoding from here when it was built from the same version of its row; only the others are loaded,
built and encoded. The services answer :class:`EncodedPage` (the objects' encodings, in order); each transport wraps
it in its list (:meth:`api.protocol.base.CursorPage.json_of`, :func:`api.grpc.convert.page_message`).

A key is what decides the object, read with the ids: for a job, its id and its ``version`` (bumped by every ORM write
of the row, the optimistic lock: tunery/db/models.py, and checked by tests/test_architecture.py for plain UPDATEs);
for an event, its id (events are never changed); for a file or a model, the few columns its object shows, whole. So a
change made by any process (another API replica, the scheduler, a trainer's report) is seen at once, with no
invalidation to send. Objects that show more than their row (a queued job's queue position) are not kept. Bounded in
bytes (``TUNERY_API_CACHE_MB``): the least recently used entries go first. The default, 64 MB, keeps about 50,000
jobs, or 200,000 events, or a mix.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class Encoding:
    """How an object is sent: ``name`` keys the cache (one entry per object and encoding), ``encode`` builds it."""

    name: str
    encode: Callable[[BaseModel], bytes]


def _json(obj: BaseModel) -> bytes:
    return obj.model_dump_json().encode()


JSON = Encoding("json", _json)


@dataclass(frozen=True)
class EncodedPage:
    """A page of a list, its objects encoded: their ids, their encodings (in order) and whether more follow."""

    ids: Sequence[str]
    items: Sequence[bytes]
    has_more: bool


# What an entry costs beyond its bytes: its key (a tuple of an encoding's name, a kind, an id and a version), the
# bytes object's header and the ordered dict's node, about, in CPython.
ENTRY_OVERHEAD = 256


Entry = bytes | tuple[bytes, ...]  # an object's encoding, or a page's (its objects' encodings, in order)


def _size(entry: Entry) -> int:
    """What an entry holds: its bytes (a page's, every object's: it keeps them whatever other entries do; its key, the
    page's rows, about as much again is not counted) and :data:`ENTRY_OVERHEAD`."""
    return (len(entry) if isinstance(entry, bytes) else sum(map(len, entry))) + ENTRY_OVERHEAD


class EncodedCache:
    """``key -> bytes`` (an object) or ``key -> tuple of bytes`` (a page), thread-safe, least recently used out first
    past ``max_bytes`` (:func:`_size` each; 0 keeps nothing)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        data = self._get(key)
        assert data is None or isinstance(data, bytes)
        return data

    def _get(self, key: Hashable) -> Entry | None:
        with self._lock:
            data = self._data.get(key)
            if data is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: Hashable, data: Entry) -> None:
        size = _size(data)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.get(key)
            if old is not None:
                self.bytes -= _size(old)
            self._data[key] = data
            self._data.move_to_end(key)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, gone = self._data.popitem(last=False)
                self.bytes -= _size(gone)

    def encoded_page(
        self, encoding: Encoding, kind: str, rows: Sequence[Iterable[Hashable]], encode: Callable[[], Sequence[bytes]]
    ) -> Sequence[bytes]:
        """A page's encodings kept whole, for ``rows``, what its objects show (each row every column its object
        shows): one lookup (and the hash of the rows) for a page of a hundred files or models, not one an object;
        else ``encode()``'s, kept. For the lists whose pages are few and long; those of many short pages (jobs,
        events) keep their objects one by one."""
        key = (encoding.name, kind, tuple(map(tuple, rows)))  # plain tuples: SQLAlchemy's Row compares in Python
        page = self._get(key)
        if page is None:
            page = tuple(encode())
            self.put(key, page)
        assert isinstance(page, tuple)
        return page

    def encoded(self, encoding: Encoding, key: tuple[Hashable, ...], build: Callable[[], BaseModel]) -> bytes:
        """The encoding kept for ``key``, or ``build()``'s, kept."""
        full = (encoding.name, *key)
        data = self.get(full)
        if data is None:
            data = encoding.encode(build())
            self.put(full, data)
        return data

    def encoded_all(
        self,
        encoding: Encoding,
        kind: str,
        keys: Sequence[tuple[str, Hashable]],
        load: Callable[[list[str]], Iterable[tuple[str, Hashable, BaseModel, bool]]],
    ) -> list[bytes]:
        """The encodings of the objects ``keys`` names (``(id, version)``), in order: those kept, and the others from
        ``load(their ids)``, which yields ``(id, version, object, keep)`` (``keep``: whether the object is its row's
        alone, so it may be kept)."""
        found = {object_id: self.get((encoding.name, kind, object_id, version)) for object_id, version in keys}
        missing = [object_id for object_id, data in found.items() if data is None]
        if missing:
            for object_id, version, obj, keep in load(missing):
                found[object_id] = data = encoding.encode(obj)
                if keep:
                    self.put((encoding.name, kind, object_id, version), data)
        return [found[object_id] or b"" for object_id, _ in keys]

    def __len__(self) -> int:
        return len(self._data)
