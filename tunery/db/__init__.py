"""Metadata store: engine, sessions and schema management (Alembic)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from tunery.db.models import (
    ApiKey,
    AuditEvent,
    Base,
    Checkpoint,
    CheckpointPermission,
    File,
    FineTunedModel,
    Job,
    JobEvent,
    ModelAlias,
    ModelAliasVersion,
    Organization,
    Project,
    ProjectSecret,
    ServiceAccount,
    StorageReservation,
    Upload,
    UploadPart,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "Checkpoint",
    "CheckpointPermission",
    "Database",
    "File",
    "FineTunedModel",
    "Job",
    "JobEvent",
    "ModelAlias",
    "ModelAliasVersion",
    "Organization",
    "Project",
    "ProjectSecret",
    "SchemaOutOfDate",
    "ServiceAccount",
    "StorageReservation",
    "Upload",
    "UploadPart",
    "WebhookDelivery",
    "WebhookEndpoint",
]

T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaOutOfDate(RuntimeError):
    pass


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


# SQLSTATEs after which a transaction can simply run again: serialization failure, deadlock (PostgreSQL).
RETRY_SQLSTATES = {"40001", "40P01"}


def retryable(exc: BaseException) -> bool:
    """Whether a failed transaction lost a race with a concurrent one and may run again on fresh state."""
    if isinstance(exc, StaleDataError):  # optimistic locking: the job's version moved on
        return True
    if isinstance(exc, DBAPIError):
        if getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES:
            return True
        # SQLite: a write on a stale WAL snapshot fails at once (SQLITE_BUSY_SNAPSHOT), busy_timeout or not.
        return "database is locked" in str(exc.orig)
    return False


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def json_loads(text: str | bytes) -> Any:
    """A JSON column's value, read with orjson (a job's row has seven JSON columns: the standard library's parser
    took most of a job's load), or, for what only the standard library reads (``NaN`` and ``Infinity``, which its
    ``json.dumps`` writes for a metric that diverged), with it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class Database:
    """One engine and a session factory for the configured URL."""

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10):
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if path and path != ":memory:":
                # A local file: no server to drop a connection, so no ping before each use; and every connection
                # kept (opening one and setting its pragmas cost more than the query of a read route: with
                # SQLAlchemy's default of 5 kept, the API's read threads, scheduler and reporting opened and
                # closed one per request under load).
                kwargs.update(pool_size=pool_size + max_overflow, max_overflow=max_overflow, pool_timeout=30)
        else:
            # A network database: a bounded pool per process (API threads + scheduler + reporting share it),
            # connections recycled before server-side idle timeouts, and a name in pg_stat_activity;
            # pool_pre_ping: a connection the server dropped (restart, failover, idle timeout) is replaced, not used.
            kwargs.update(
                pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800, pool_timeout=30, pool_pre_ping=True
            )
            if url.startswith("postgresql"):
                kwargs["connect_args"] = {"application_name": "tunery", "connect_timeout": 10}
        self.engine: Engine = create_engine(url, json_deserializer=json_loads, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._held = threading.local()  # the connection :meth:`holding` lends this thread's reads
        # The webhook outbox: a job's end (or a checkpoint) writes its events' deliveries in its own transaction.
        from tunery.webhooks import record_events

        event.listen(self._sessions, "before_flush", record_events)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commits on success, rolls back on error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads without the ORM: the reads clients poll, whose statements are built once
        (api/pagination.py's ``Pager``), run here in about a fifth of what building and running them through a
        ``Session`` costs. :meth:`orm` reads ORM objects on it (the few rows a read must build objects from).
        Within :meth:`holding`, the connection this thread holds, its transaction ended after each read (the next
        read sees what was committed meanwhile)."""
        held: Connection | None = getattr(self._held, "conn", None)
        if held is None:
            with self.engine.connect() as conn:
                yield conn
            return
        try:
            yield held
        finally:
            held.rollback()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """The reads this thread makes meanwhile (:meth:`read`) share one connection, taken from the pool once: for
        a run of short reads one after another (api/context.py's ``LoopReads``, a turn of the event loop's reads),
        where taking one from the pool and giving it back, each read, cost as much as the read of a job."""
        if getattr(self._held, "conn", None) is not None:
            yield
            return
        with self.engine.connect() as conn:
            self._held.conn = conn
            try:
                yield
            finally:
                self._held.conn = None

    def orm(self, conn: Connection) -> Session:
        """A session on ``conn`` (:meth:`read`'s), configured as :meth:`session`'s; close it (``with``)."""
        return self._sessions(bind=conn)

    def transaction(self, fn: Callable[[Session], T], attempts: int = 8) -> T:
        """Run ``fn`` in a transaction; if it lost a race with a concurrent writer (a job's version moved on, a
        serialization failure or deadlock on PostgreSQL, a stale snapshot on SQLite), run it again on fresh state."""
        for attempt in range(attempts):
            try:
                with self.session() as s:
                    return fn(s)
            except Exception as e:
                if attempt == attempts - 1 or not retryable(e):
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    # Schema management -------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Bring the schema to the newest migration (``tunery db upgrade``)."""
        from alembic import command

        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Several replicas (init containers, `tunery db upgrade` run twice) may upgrade at once: one at a
                # time, the others then find the schema current. The lock goes with the transaction.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tunery-migrations'))"))
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    def display_url(self) -> str:
        """The URL without its password, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    def check_schema(self) -> None:
        """Refuse to run on a schema that is not the code's: empty, behind (run the migrations) or ahead."""
        from alembic.script import ScriptDirectory

        current, head = self.current_revision(), self.head_revision()
        if current == head:
            return
        where = self.display_url()
        known = {r.revision for r in ScriptDirectory.from_config(alembic_config(self.url)).walk_revisions()}
        if current is not None and current not in known:
            raise SchemaOutOfDate(
                f"the database schema of {where} is at revision {current}, newer than this version of Tunery "
                f"(which needs {head}): run a newer Tunery"
            )
        tables = inspect(self.engine).get_table_names()
        state = "empty" if not tables or current is None else f"at revision {current}"
        raise SchemaOutOfDate(
            f"the database schema of {where} is {state}, this version of Tunery needs revision {head}: "
            "run `tunery db upgrade` (with the same TUNERY_DATABASE_URL) first"
        )
