"""Which metadata store the test servers use: SQLite (default) or PostgreSQL, a fresh database on a real server.

``tiny_server_factory`` (conftest.py) adds ``database_settings`` to every server it starts. A test module runs its
server tests against both stores with ``from tests.metadata_stores import every_metadata_store``; a test that needs
PostgreSQL itself asks for ``pg_url`` (an empty database) or ``migrated_pg_url``. The PostgreSQL is the machine's
(``TUNERY_TEST_POSTGRES_URL``, default 127.0.0.1:5432, user postgres, trust auth), or, when that is not running, a
throwaway cluster if PostgreSQL is installed; without either the PostgreSQL tests skip with the reason, except
under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

POSTGRES_ADMIN_URL = os.environ.get("TUNERY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(reason: str) -> None:
    """A real part the test needs is not here: skip, except under CI=true, where it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: every part must be present)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server to create test databases on (a libpq URL of its `postgres` database)."""
    import psycopg

    from tests.postgres_server import throwaway_postgres

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        yield POSTGRES_ADMIN_URL
        return
    except psycopg.Error as e:
        error = e
    reason = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (TUNERY_TEST_POSTGRES_URL): {error}"
    if "TUNERY_TEST_POSTGRES_URL" not in os.environ:
        with throwaway_postgres() as url:
            if url:
                yield url
                return
        reason += "; no PostgreSQL installed for a throwaway cluster either"
    unavailable(reason)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """Create an empty database `tunery_t_<random>`; yields its SQLAlchemy URL; drops it afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"tunery_t_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (a SQLAlchemy URL), dropped afterwards."""
    with postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def _module_pg_url(postgres_admin_url: str) -> Iterator[str]:
    from tunery.db import Database

    with postgres_database(postgres_admin_url) as url:
        db = Database(url)
        db.upgrade()  # as `tunery db upgrade` does
        db.engine.dispose()
        yield url


@pytest.fixture
def migrated_pg_url(_module_pg_url: str) -> str:
    """A PostgreSQL database with the current schema and no rows: made once per module, emptied for each test."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tunery.db import Base

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    libpq = make_url(_module_pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return _module_pg_url


@pytest.fixture
def metadata_store() -> str:
    """The metadata store of the test servers: "sqlite" unless a module says otherwise."""
    return "sqlite"


@pytest.fixture(params=["sqlite", "postgresql"], name="metadata_store")
def every_metadata_store(request: pytest.FixtureRequest) -> str:
    """Imported into a test module, it runs each of its server tests once per metadata store."""
    return str(request.param)


@pytest.fixture
def database_settings(metadata_store: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the chosen metadata store: SQLite under the server's data dir, or a PostgreSQL database with
    the current schema, shared by the test's servers."""
    if metadata_store == "postgresql":
        return {"database_url": request.getfixturevalue("migrated_pg_url")}
    if metadata_store != "sqlite":
        raise ValueError(f"unknown metadata store {metadata_store!r}")
    return {}
