"""The request door (api/limits.py's ``admission``) decides on the event loop when it needs no I/O, and says so
(``WouldBlock``, nothing taken) when it does: a stored key, a key registry or a project limit to ask the store again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from api.errors import APIError
from api.limits import admission
from api.ratelimit import RateLimiter
from tunery import tenancy
from tunery.audit import CLI
from tunery.db import Database
from tunery.settings import Settings
from tunery.tenancy import KeyRegistry, WouldBlock

GET_JOBS = ("GET", "/v1/fine_tuning/jobs", {})


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    database.upgrade()
    tenancy.ensure_default_rows(database, Settings(data_dir=tmp_path))
    yield database
    database.engine.dispose()


def _queries(db: Database) -> list[str]:
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_an_open_server_admits_on_the_loop_once_it_knows_no_key_was_issued(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, project_requests_per_minute=600)
    keys, limiter = KeyRegistry(db, recheck_seconds=3600), RateLimiter(settings, db)
    with pytest.raises(WouldBlock):  # never asked yet: the store has the answer
        admission(settings, keys, limiter, None, *GET_JOBS, blocking=False)
    principal, verdict = admission(settings, keys, limiter, None, *GET_JOBS)  # in a thread, as the guard does
    assert principal.open_access and verdict is not None and verdict.remaining == 599
    queries = _queries(db)
    principal, verdict = admission(settings, keys, limiter, None, *GET_JOBS, blocking=False)
    assert principal.open_access and verdict is not None and verdict.remaining == 598
    assert queries == []  # decided without the store


def test_a_bootstrap_key_is_checked_on_the_loop_and_a_wrong_one_refused_there(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=["sk-bootstrap"])
    keys = KeyRegistry(db, recheck_seconds=3600)
    keys.issued()
    queries = _queries(db)
    principal, verdict = admission(settings, keys, None, "Bearer sk-bootstrap", *GET_JOBS, blocking=False)
    assert principal.role == "admin" and verdict is None
    with pytest.raises(APIError) as refused:
        admission(settings, keys, None, None, *GET_JOBS, blocking=False)
    assert refused.value.status == 401 and queries == []


def test_a_stored_key_or_a_limit_to_read_again_would_block_and_takes_nothing(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, project_requests_per_minute=2)
    with db.session() as s:
        key = tenancy.issue_key(
            s, CLI, organization_id=settings.organization_id, project_id=settings.project_id, role="member", name="k"
        )
    keys, limiter = KeyRegistry(db), RateLimiter(settings, db)
    keys.issued()
    with pytest.raises(WouldBlock):  # the key is looked up in the store
        admission(settings, keys, limiter, f"Bearer {key.value}", *GET_JOBS, blocking=False)
    principal, verdict = admission(settings, keys, limiter, f"Bearer {key.value}", *GET_JOBS)
    assert principal.project_id == settings.project_id and verdict is not None and verdict.remaining == 1
    # A limit not read yet would block, before a token is taken.
    fresh = RateLimiter(settings, db)
    with pytest.raises(WouldBlock):
        fresh.take(settings.project_id, blocking=False)
    assert fresh.take(settings.project_id) is not None and fresh.take(settings.project_id, blocking=False) is not None
    over = fresh.take(settings.project_id, blocking=False)
    assert over is not None and over.retry_after is not None  # two a minute: the third waits


def test_one_caller_asks_the_store_again_and_the_others_take_the_last_answer_meanwhile(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a recheck, the first request on the loop is sent to ask (WouldBlock); those that come before its answer
    are decided on the loop with the last one, not sent too (200 requests under way were 200 queries a recheck)."""
    from api import ratelimit

    settings = Settings(data_dir=tmp_path, project_requests_per_minute=600)
    keys, limiter = KeyRegistry(db, recheck_seconds=0.2), RateLimiter(settings, db)
    monkeypatch.setattr(ratelimit, "RECHECK_SECONDS", 0.2)
    admission(settings, keys, limiter, None, *GET_JOBS)  # both known
    clock = [tenancy.time.monotonic() + 0.3]  # past a recheck of both
    monkeypatch.setattr(tenancy.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    queries = _queries(db)
    with pytest.raises(WouldBlock):
        keys.issued(blocking=False)
    assert keys.issued(blocking=False) is False  # the answer is being asked for: the last one meanwhile
    with pytest.raises(WouldBlock):
        limiter.limit_of(settings.project_id, blocking=False)
    assert limiter.limit_of(settings.project_id, blocking=False) == 600
    principal, verdict = admission(settings, keys, limiter, None, *GET_JOBS, blocking=False)
    assert principal.open_access and verdict is not None and queries == []
    # An asker that never answered (its request gone) is replaced once a recheck has passed.
    clock[0] += 0.3
    with pytest.raises(WouldBlock):
        keys.issued(blocking=False)
    assert keys.issued() is False and len(queries) == 1  # the one that asked
    assert keys.issued(blocking=False) is False and len(queries) == 1
