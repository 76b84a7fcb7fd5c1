"""What every part of a scheduler replica works with: its settings, the metadata store, the object store, the run
backend, its metrics and its replica id. The parts (claims, preprocessing, dispatch, run lifecycle) take one
:class:`SchedulerContext` and read it through :class:`SchedulerPart`."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.backends import Backend
from tunery.db import Database
from tunery.metrics import Metrics
from tunery.settings import Settings
from tunery.storage import ObjectStore


@dataclass(frozen=True)
class SchedulerContext:
    settings: Settings
    db: Database
    store: ObjectStore
    backend: Backend
    metrics: Metrics
    replica_id: str


class SchedulerPart:
    """A part of the scheduler: the context's members as attributes."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def db(self) -> Database:
        return self.ctx.db

    @property
    def store(self) -> ObjectStore:
        return self.ctx.store

    @property
    def backend(self) -> Backend:
        return self.ctx.backend

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def replica_id(self) -> str:
        return self.ctx.replica_id
