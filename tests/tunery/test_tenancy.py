"""Keys in the metadata store (tunery/tenancy.py): stored as a hash only, found by it and compared in constant time;
revoked, expired and archived-project keys are not found; whether keys were issued is cached, not asked per request."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest
from sqlalchemy import event, select

from tunery import tenancy
from tunery.audit import CLI
from tunery.db import ApiKey, Database, Project
from tunery.db.ops import now
from tunery.settings import Settings


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    database.upgrade()
    yield database
    database.engine.dispose()


def test_a_key_is_stored_as_its_hash_only_and_found_by_it(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=Path("unused"))
    with db.session() as s:
        project = tenancy.ensure_default_tenancy(s, settings)
        s.flush()
        account, key = tenancy.create_service_account(s, CLI, project, name="ci", role="member")
    assert key.value.startswith(tenancy.PROJECT_KEY_PREFIX) and len(key.value) > 40
    with db.engine.connect() as conn:
        stored = [str(v) for row in conn.exec_driver_sql("SELECT * FROM api_keys") for v in row]
    assert key.value not in stored and tenancy.key_digest(key.value) in stored
    assert f"sk-svcacct-...{key.value[-4:]}" in stored

    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenancy.hmac, "compare_digest", spy)
    with db.session() as s:
        found = tenancy.find_key(s, key.value)
        assert found is not None and found.service_account_id == account.id and found.role == "member"
        assert tenancy.find_key(s, key.value + "x") is None
    assert compared and all(a == b for a, b in compared)  # the found row is checked again in constant time


def test_revoked_expired_and_archived_keys_are_not_found(db: Database) -> None:
    with db.session() as s:
        project = tenancy.create_project(s, CLI, "org-default", "p")
        s.flush()
        _, live = tenancy.create_service_account(s, CLI, project, name="a", role="reader")
        _, expiring = tenancy.create_service_account(s, CLI, project, name="b", role="owner", expires_at=now() + 60)
        admin = tenancy.issue_key(s, CLI, organization_id="org-default", project_id=None, role="admin", name="ops")
    with db.session() as s:
        assert tenancy.find_key(s, expiring.value) is not None
        assert tenancy.find_key(s, expiring.value, at=now() + 61) is None
        tenancy.revoke(s, CLI, s.scalar(select(ApiKey).where(ApiKey.id == live.row.id)))  # type: ignore[arg-type]
    with db.session() as s:
        assert tenancy.find_key(s, live.value) is None
        assert tenancy.find_key(s, admin.value) is not None
        s.scalar(select(Project).where(Project.id == project.id)).archived_at = now()  # type: ignore[union-attr]
    with db.session() as s:
        assert tenancy.find_key(s, expiring.value) is None  # its project is archived
        assert tenancy.find_key(s, admin.value) is not None  # an organization key has no project
    with pytest.raises(ValueError), db.session() as s:
        tenancy.issue_key(s, CLI, organization_id="org-default", project_id=None, role="member", name="x")


def test_whether_keys_were_issued_is_cached(db: Database) -> None:
    queries: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
    registry = tenancy.KeyRegistry(db, recheck_seconds=3600)
    assert not registry.issued()
    asked = len(queries)
    assert not registry.issued() and len(queries) == asked  # a negative answer is kept for recheck_seconds
    with db.session() as s:
        key = tenancy.issue_key(s, CLI, organization_id="org-default", project_id=None, role="admin", name="ops")
    assert not registry.issued()  # another process's key: seen at the next recheck
    assert tenancy.KeyRegistry(db).issued()
    registry.note_issued()
    with db.session() as s:
        tenancy.revoke(s, CLI, s.scalar(select(ApiKey).where(ApiKey.id == key.row.id)))  # type: ignore[arg-type]
    before = len(queries)
    assert registry.issued() and len(queries) == before  # for good, without a query: revoked keys keep their rows
    assert tenancy.KeyRegistry(db).issued()


def test_a_keys_last_use_is_written_at_most_once_a_minute(db: Database) -> None:
    with db.session() as s:
        key = tenancy.issue_key(s, CLI, organization_id="org-default", project_id=None, role="admin", name="ops")
        key_id = key.row.id
    t = now()
    assert tenancy.note_use(db, key_id, None, at=t)  # never used: written
    assert not tenancy.note_use(db, key_id, t, at=t + 59)  # read a fresh value: no statement at all
    assert tenancy.note_use(db, key_id, None, at=t + 30)  # a racer that read the old value: its UPDATE matches nothing
    with db.session() as s:
        assert s.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id)) == t
    assert tenancy.note_use(db, key_id, t, at=t + 60)
    with db.session() as s:
        assert s.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id)) == t + 60


def test_a_rechecked_value_is_read_once_a_recheck_and_kept_for_good_once_final(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tunery.tenancy.Rechecked, the rule of what admission rechecks: a read per recheck however many callers; without
    blocking, one caller a recheck is sent to read (WouldBlock) and the others take the last value; a final value is
    never read again."""
    from tunery import tenancy
    from tunery.tenancy import Rechecked, WouldBlock

    clock = [100.0]
    monkeypatch.setattr(tenancy.time, "monotonic", lambda: clock[0])
    reads: list[int] = []
    answers = iter([3, 5, 7, 9])

    def read() -> int:
        reads.append(1)
        return next(answers)

    value = Rechecked(read, 1.0, "a number", final=lambda v: v >= 7)
    with pytest.raises(WouldBlock, match="a number is to be read"):
        value.get(blocking=False)  # nothing known yet: the first caller is sent to read
    with pytest.raises(WouldBlock):
        value.get(blocking=False)  # and so is the next: there is no last value to give
    assert [value.get() for _ in range(5)] == [3] * 5 and len(reads) == 1
    clock[0] += 1.5  # past a recheck
    with pytest.raises(WouldBlock):
        value.get(blocking=False)
    assert value.get(blocking=False) == 3 and len(reads) == 1  # another caller reads it meanwhile
    assert value.get() == 5 and len(reads) == 2
    value.set(7)  # final: kept for good
    clock[0] += 100
    assert value.get(blocking=False) == 7 and value.get() == 7 and len(reads) == 2
