"""The metadata store on SQLite and PostgreSQL: the migrations build exactly the models' schema and go back down,
the server refuses a schema that is not the code's (with the command that fixes it), optimistic locking holds and
`transaction()` runs a transaction again after losing a race."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.orm.exc import StaleDataError

from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tunery.db import Base, Database, Job, SchemaOutOfDate, alembic_config
from tunery.db.ops import now
from tunery.settings import Settings


@pytest.fixture
def empty_url(metadata_store: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of the store under test."""
    if metadata_store == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'tunery.db'}"


@pytest.fixture
def db(empty_url: str):  # type: ignore[no-untyped-def]
    database = Database(empty_url)
    yield database
    database.engine.dispose()


def test_migrations_build_the_models_schema_and_go_back_down(db: Database) -> None:
    db.upgrade()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    with db.engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert db.current_revision() is None
    db.upgrade()
    assert db.current_revision() == db.head_revision()


def test_postgresql_column_types(pg_url: str) -> None:
    db = Database(pg_url)
    db.upgrade()
    with db.engine.connect() as conn:
        types = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'jobs' AND table_schema = current_schema()"
                )
            ).all()
        )
        pk_default = conn.execute(
            text(
                "SELECT column_default FROM information_schema.columns WHERE table_name = 'jobs' AND column_name = 'pk'"
            )
        ).scalar()
    assert types["pk"] == "bigint" and "nextval" in (pk_default or "")
    assert types["created_at"] == "bigint" and types["lease_expires_at"] == "bigint"
    assert types["cancel_requested"] == "boolean"
    assert types["hyperparameters"] == "json" and types["metadata"] == "json"
    db.engine.dispose()


def settings_for(url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=url, demo_model=False, model_cache_dir=tmp_path / "c")


def test_server_refuses_a_schema_that_is_not_the_codes(
    metadata_store: str, empty_url: str, db: Database, tmp_path: Path
) -> None:
    from api.server import build

    settings = settings_for(empty_url, tmp_path)
    if metadata_store == "sqlite":
        _app, shutdown = build(settings, prepare_models=False)  # embedded: the server migrates its own file
        shutdown()
        assert db.current_revision() == db.head_revision()
        return

    with pytest.raises(SchemaOutOfDate, match=r"is empty, .* needs revision \w+: run `tunery db upgrade`"):
        build(settings, prepare_models=False)
    with db.engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    with pytest.raises(SchemaOutOfDate, match=r"at revision 0003, .*run `tunery db upgrade`"):
        build(settings, prepare_models=False)
    secret = Database("postgresql+psycopg://tunery:s3cret@db.example/tunery")
    assert "s3cret" not in secret.display_url()

    # What an operator sees: `tunery serve` exits with the message, `tunery db upgrade` fixes it.
    env = {**os.environ, "TUNERY_DATABASE_URL": empty_url, "TUNERY_DATA_DIR": str(tmp_path / "data")}
    env.update(TUNERY_DEMO_MODEL="false", TUNERY_PORT="1")
    out = subprocess.run([sys.executable, "-m", "api.cli", "serve"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "at revision 0003" in out.stderr and "run `tunery db upgrade`" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "api.cli", "db", "upgrade"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"schema at revision {db.head_revision()}" in out.stdout
    _app, shutdown = build(settings, prepare_models=False)
    shutdown()

    # A database migrated by a newer Tunery is refused too, with a different remedy.
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaOutOfDate, match="newer than this version of Tunery"):
        build(settings, prepare_models=False)


def _job() -> Job:
    hp = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}
    return Job(
        id="ftjob-locking",
        organization_id="org",
        project_id="proj",
        created_at=now(),
        status="queued",
        model="m",
        base_model="m",
        training_file="file-x",
        seed=1,
        method={"type": "supervised"},
        hyperparameters=hp,
        result_files=[],
        attempts=0,
        cancel_requested=False,
    )


def test_optimistic_locking_and_transaction_retry(db: Database) -> None:
    db.upgrade()
    with db.session() as s:
        s.add(_job())

    # A write based on a stale read fails...
    with pytest.raises(StaleDataError), db.session() as s1:
        stale = s1.scalar(select(Job).where(Job.id == "ftjob-locking"))
        assert stale is not None and stale.version == 1
        with db.session() as s2:
            fresh = s2.scalar(select(Job).where(Job.id == "ftjob-locking"))
            assert fresh is not None
            fresh.status = "cancelled"
        stale.status = "running"
    # ... and transaction() runs the function again on fresh state.
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-locking"))
        assert job is not None and job.version == 2
        job.status = "queued"
    seen: list[int] = []

    def launch(s):  # type: ignore[no-untyped-def]
        job = s.scalar(select(Job).where(Job.id == "ftjob-locking"))
        seen.append(job.version)
        if len(seen) == 1:  # a concurrent writer changes the job between this read and this write
            with db.session() as other:
                o = other.scalar(select(Job).where(Job.id == "ftjob-locking"))
                o.suffix = "changed"
        job.status = "running"

    db.transaction(launch)
    assert seen == [3, 4]
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-locking"))
        assert job is not None and (job.status, job.suffix, job.version) == ("running", "changed", 5)


def test_transaction_retries_a_serialization_failure(migrated_pg_url: str) -> None:
    """PostgreSQL aborts a REPEATABLE READ transaction that updates a row changed since its snapshot (40001);
    transaction() runs it again."""
    db = Database(migrated_pg_url)
    try:
        with db.session() as s:
            s.add(_job())
        attempts: list[int] = []

        def bump(s):  # type: ignore[no-untyped-def]
            s.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            seed = s.execute(text("SELECT seed FROM jobs WHERE id = 'ftjob-locking'")).scalar_one()
            attempts.append(seed)
            if len(attempts) == 1:  # another writer commits after this snapshot was taken
                with db.engine.begin() as other:
                    other.execute(text("UPDATE jobs SET seed = seed + 10 WHERE id = 'ftjob-locking'"))
            s.execute(text("UPDATE jobs SET seed = :v WHERE id = 'ftjob-locking'"), {"v": seed + 1})

        db.transaction(bump)
        assert attempts == [1, 11]
        with db.session() as s:
            assert s.execute(text("SELECT seed FROM jobs WHERE id = 'ftjob-locking'")).scalar_one() == 12
    finally:
        db.engine.dispose()


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_postgresql_tests_skip_without_a_server_and_fail_under_ci(ci: str, outcome: str) -> None:
    env = {**os.environ, "TUNERY_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:9/postgres", "CI": ci}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_postgresql_column_types",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert outcome in out.stdout, out.stdout[-2000:]
    assert "PostgreSQL is not reachable at postgresql://postgres@127.0.0.1:9/postgres" in out.stdout


def test_concurrent_upgrades_apply_the_migrations_once(pg_url: str) -> None:
    """Replicas that all run `tunery db upgrade` at start: one migrates, the others find the schema current."""
    errors: list[BaseException] = []

    def upgrade() -> None:
        db = Database(pg_url)
        try:
            db.upgrade()
        except BaseException as e:
            errors.append(e)
        finally:
            db.engine.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    db = Database(pg_url)
    assert db.current_revision() == db.head_revision()
    db.engine.dispose()
