"""What the API needs at hand: settings, the metadata store, the object store, the serving backend."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel
from sqlalchemy import BindParameter, String, bindparam

from api.encoded import EncodedCache
from api.ratelimit import RateLimiter
from tunery.db import Database
from tunery.metrics import Metrics
from tunery.settings import Settings
from tunery.storage import ObjectStore
from tunery.tenancy import KeyRegistry

if TYPE_CHECKING:
    from serving.backend import ServingBackend

T = TypeVar("T")


# How many of the reads run on the event loop take their turn in one pass of the loop (LoopReads).
READS_PER_TURN = 8


class LoopReads:
    """The reads run on the event loop (``run_read`` with no read threads), in the order they came, at most
    :data:`READS_PER_TURN` a pass of the loop.

    Each runs whole when its turn comes, blocking the loop meanwhile (a local read is short). Run by their requests
    as soon as they were awaited, one pass of the loop would run every request under way: under 200 clients, a pass
    took 250 ms, and so did a ``/health`` answer on the API port, or any new request's first step. Queued, a pass
    runs a few reads (and the few requests their answers let the clients send), and the loop turns every few ms.
    A turn's reads run within ``hold()`` (the metadata store's ``Database.holding``: one connection for them all).
    One queue per event loop (a test may run several, one after another), each used only on its loop's thread."""

    def __init__(self, per_turn: int = READS_PER_TURN, hold: Callable[[], AbstractContextManager[None]] = nullcontext):
        self.per_turn = per_turn
        self.hold = hold
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue(loop, self.per_turn, self.hold)
        future: asyncio.Future[T] = loop.create_future()
        queue.add(future, fn, args)
        return await future


class _LoopQueue:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, per_turn: int, hold: Callable[[], AbstractContextManager[None]]
    ):
        self.loop = loop
        self.per_turn = per_turn
        self.hold = hold
        self.waiting: deque[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self.scheduled = False

    def add(self, future: asyncio.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.waiting.append((future, fn, args))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.turn)

    def turn(self) -> None:
        """Run the next reads (a request that left meanwhile is skipped); come back next pass if more wait."""
        waiting = self.waiting
        turn: list[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        while waiting and len(turn) < self.per_turn:
            read = waiting.popleft()
            if not read[0].done():  # done: cancelled, its request is gone
                turn.append(read)
        try:
            with self.hold():
                for future, fn, args in turn:
                    try:
                        future.set_result(fn(*args))
                    except Exception as e:  # to its request, as a thread's would be
                        future.set_exception(e)
        except Exception as e:  # the hold itself failed (no connection): the turn's requests get the error
            for future, _, _ in turn:
                if not future.done():
                    future.set_exception(e)
        finally:
            if waiting:
                self.loop.call_soon(self.turn)
            else:
                self.scheduled = False


@dataclass
class AppContext:
    settings: Settings
    db: Database
    store: ObjectStore
    serving: ServingBackend | None = None  # None: this role has no serving engine (chat answers 503)
    # Called after a change the scheduler should act on at once (new job, cancel).
    wake_scheduler: Callable[[], None] = field(default=lambda: None)
    metrics: Metrics = field(default_factory=Metrics)
    # Whether the store has issued API keys (api/auth.py): None to ignore stored keys.
    keys: KeyRegistry | None = None
    # The read routes' threads (run_read): TUNERY_API_READ_THREADS; None (0 threads): the reads run on the event loop,
    # taking turns there (loop_reads).
    read_threads: ThreadPoolExecutor | None = field(init=False)
    loop_reads: LoopReads = field(init=False)
    # The projects' request rate limits (api/ratelimit.py), counted by the request guard.
    rate_limiter: RateLimiter = field(init=False)
    # The reads' objects encoded (JSON, protobuf), each for one version of its rows (api/encoded.py).
    encoded: EncodedCache = field(init=False)

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = KeyRegistry(self.db)
        threads = self.settings.resolved_api_read_threads
        self.read_threads = ThreadPoolExecutor(threads, thread_name_prefix="tunery-read") if threads else None
        self.loop_reads = LoopReads(hold=self.db.holding)
        self.encoded = EncodedCache(self.settings.api_cache_mb * 1_000_000)
        self.rate_limiter = RateLimiter(self.settings, self.db)

    def close(self) -> None:
        """Let the read threads go (reads under way finish; none starts after)."""
        if self.read_threads is not None:
            self.read_threads.shutdown(wait=False, cancel_futures=True)


async def run_read(ctx: AppContext, fn: Callable[..., T], *args: Any, objects: bool = False) -> T:
    """Run a read route's blocking service call (metadata store reads, building the answer; ``objects``: the object
    store's too) where ``TUNERY_API_READ_THREADS`` says.

    * **On the event loop** (0 threads, the default on SQLite) when what it reads is local: the SQLite file, and
      the object store's folder for ``objects``. Such a read waits on nothing and holds the GIL from end to end, so a
      thread would add only the trips there and back, and a wait for the GIL after every call that lets it go (each
      row SQLite steps, each syscall), in the thread and on the loop. Under 200 clients: 1,314 requests/s against
      750 with 2 threads (bench/api_load.py). An ``objects`` read of S3 goes to anyio's threads.
    * **In the read routes' threads** (8 on PostgreSQL), whose reads wait on the network: at most that many at once,
      not among anyio's default 40, so a long upload never holds a read's thread, nor a burst of reads an upload's.
      A pool of the standard library's, through the loop: a trip costs the loop about 14 us of CPU under load,
      against 60 us through anyio's ``to_thread`` (its cancel scope and limiter, per call). A client that leaves
      does not stop a read under way (it is short): its answer is dropped."""
    if ctx.read_threads is None:
        if objects and not ctx.store.local:
            return await asyncio.to_thread(fn, *args)
        return await ctx.loop_reads.run(fn, *args)
    return await asyncio.get_running_loop().run_in_executor(ctx.read_threads, fn, *args)


async def read_json(
    ctx: AppContext, fn: Callable[..., BaseModel | bytes], *args: Any, objects: bool = False
) -> Response:
    """:func:`run_read`, with the answer written as JSON in the same call (pydantic's serializer, once). FastAPI
    would check and serialize the returned object again (a route declares its ``response_model`` for
    ``/openapi.json``)."""

    def work() -> bytes:
        answer = fn(*args)  # an object, or its JSON already (the services' encoded reads, api/encoded.py)
        return answer if isinstance(answer, bytes) else answer.model_dump_json().encode()

    return Response(await run_read(ctx, work, objects=objects), media_type="application/json")


@dataclass(frozen=True)
class Tenant:
    organization_id: str
    project_id: str

    def params(self) -> dict[str, str]:
        """The values of :data:`BOUND_TENANT`'s parameters, for a statement built once that reads this tenant's rows."""
        return {"organization_id": self.organization_id, "project_id": self.project_id}


@dataclass(frozen=True)
class BoundTenant:
    """A tenant as bound parameters: the conditions of a statement built once (a module constant) name the tenant
    with these, and each run binds them to :meth:`Tenant.params`."""

    organization_id: BindParameter[str]
    project_id: BindParameter[str]


BOUND_TENANT = BoundTenant(bindparam("organization_id", type_=String()), bindparam("project_id", type_=String()))


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx
