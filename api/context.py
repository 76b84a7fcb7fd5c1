"""What the API needs at hand: settings, the metadata store, the object store, the serving backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from tunery.db import Database
from tunery.metrics import Metrics
from tunery.settings import Settings
from tunery.storage import ObjectStore
from tunery.tenancy import KeyRegistry

if TYPE_CHECKING:
    from serving.backend import ServingBackend


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

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = KeyRegistry(self.db)


@dataclass(frozen=True)
class Tenant:
    organization_id: str
    project_id: str


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx
