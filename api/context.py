"""What the API needs at hand: settings, the metadata store, the object store, the serving backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    # The read routes' threads (run_read): TUNERY_API_READ_THREADS.
    read_threads: ThreadPoolExecutor = field(init=False)
    # The projects' request rate limits (api/ratelimit.py), counted by the request guard.
    rate_limiter: RateLimiter = field(init=False)
    # The reads' objects encoded (JSON, protobuf), each for one version of its rows (api/encoded.py).
    encoded: EncodedCache = field(init=False)

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = KeyRegistry(self.db)
        self.read_threads = ThreadPoolExecutor(
            self.settings.resolved_api_read_threads, thread_name_prefix="tunery-read"
        )
        self.encoded = EncodedCache(self.settings.api_cache_mb * 1_000_000)
        self.rate_limiter = RateLimiter(self.settings, self.db)

    def close(self) -> None:
        """Let the read threads go (reads under way finish; none starts after)."""
        self.read_threads.shutdown(wait=False, cancel_futures=True)


async def run_read(ctx: AppContext, fn: Callable[..., T], *args: Any) -> T:
    """Run a read route's blocking service call (database reads, building the answer) in a thread, at most
    ``TUNERY_API_READ_THREADS`` at once (2 on SQLite, 8 on PostgreSQL), not among anyio's default 40.

    Few on purpose: that work holds the GIL nearly all the time, so more threads add no throughput, and each one
    waiting for the GIL delays the event loop's turn too (under load a /health answer then took seconds). The other
    blocking calls (uploads, the object store, job creation) keep anyio's default pool: a long upload never holds a
    read's thread, nor a burst of reads an upload's.

    A thread pool of the standard library's, through the loop: a trip there and back costs the event loop about
    14 us of CPU under load, against 60 us through anyio's ``to_thread`` (its cancel scope and limiter, per call).
    A client that leaves does not stop a read under way (it is short): its answer is dropped."""
    return await asyncio.get_running_loop().run_in_executor(ctx.read_threads, fn, *args)


async def read_json(ctx: AppContext, fn: Callable[..., BaseModel | bytes], *args: Any) -> Response:
    """:func:`run_read`, with the answer written as JSON in the same thread (pydantic's serializer, once): the event
    loop only sends the bytes. FastAPI would check and serialize the returned object again on the event loop, which
    under load delays every other request and ``/health`` (a route declares its ``response_model`` for
    ``/openapi.json``)."""

    def work() -> bytes:
        answer = fn(*args)  # an object, or its JSON already (the services' encoded reads, api/encoded.py)
        return answer if isinstance(answer, bytes) else answer.model_dump_json().encode()

    return Response(await run_read(ctx, work), media_type="application/json")


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
