"""The audit log (tunery/audit.py, ``GET /v1/organization/audit_logs``) through the real server and the SDK's
``client.admin.organization.audit_logs``: each change is there with who made it, in which project; OpenAI's filters
and cursors; only an admin of the organization sees it; no secret in it. ``tunery admin audit`` prints it."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from openai import OpenAI
from sqlalchemy import select

from tests.conftest import TINY, chat_lines
from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tunery import jobstate, tenancy
from tunery.audit import CLI, EventType
from tunery.db import ApiKey, FineTunedModel, Job
from tunery.db.ops import now

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"


def sdk(srv: Any, key: str) -> OpenAI:
    return OpenAI(base_url=f"{srv.base_url}/v1", api_key=key, admin_api_key=key, max_retries=0)


def events(client: OpenAI, **filters: Any) -> list[Any]:
    """Every event the filters keep, newest first (the SDK follows the cursors)."""
    return list(client.admin.organization.audit_logs.list(limit=100, **filters))


def detail(e: Any) -> dict[str, Any]:
    """The event's details: the field named after its type."""
    return e.model_extra[e.type] if e.model_extra and e.type in e.model_extra else getattr(e, e.type.replace(".", "_"))


def test_each_change_is_logged_with_its_actor_and_project(tiny_server_factory):
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0)  # nothing trains
    admin = sdk(srv, BOOTSTRAP)
    org = admin.admin.organization
    project = org.projects.create(name="Team A")
    org.projects.update(project.id, name="Team A2")
    account = org.projects.service_accounts.create(project.id, name="ci", extra_body={"role": "owner"})
    assert account.api_key is not None
    member_key = account.api_key.value
    member = sdk(srv, member_key)

    f = member.files.create(file=("t.jsonl", chat_lines(20)), purpose="fine-tune")
    gone = member.files.create(file=("g.jsonl", chat_lines(2)), purpose="fine-tune")
    member.files.delete(gone.id)
    up = member.uploads.create(bytes=3, filename="u.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = member.uploads.parts.create(up.id, data=b"{}\n")
    completed = member.uploads.complete(up.id, part_ids=[part.id])
    assert completed.file is not None
    cancelled = member.uploads.create(bytes=3, filename="c.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    member.uploads.cancel(cancelled.id)

    job = member.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    deadline = time.monotonic() + 60
    while member.fine_tuning.jobs.retrieve(job.id).status != "queued":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with srv.app.state.ctx.db.session() as s:  # as the scheduler would start it: only a running job pauses
        row = s.scalar(select(Job).where(Job.id == job.id))
        assert row is not None
        jobstate.start(row, now())
    member.fine_tuning.jobs.pause(job.id)
    member.fine_tuning.jobs.resume(job.id)
    member.fine_tuning.jobs.cancel(job.id)
    model = f"ft:{TINY}:personal:a:{job.id[6:14]}"
    with srv.app.state.ctx.db.session() as s:
        s.add(
            FineTunedModel(
                id=model,
                kind="fine_tuned",
                base_model=TINY,
                job_id=job.id,
                object_prefix=f"jobs/{job.id}/adapter",
                owned_by="personal",
                created_at=now(),
                organization_id=srv.settings.organization_id,
                project_id=project.id,
            )
        )
    member.models.delete(model)

    # The owner manages its project's accounts; the admin its admin keys; an archived project.
    other = member.admin.organization.projects.service_accounts.create(project.id, name="other")
    assert other.api_key is not None
    member.admin.organization.projects.api_keys.delete(other.api_key.id, project_id=project.id)
    member.admin.organization.projects.service_accounts.delete(other.id, project_id=project.id)
    ops = org.admin_api_keys.create(name="ops")
    assert ops.value
    org.admin_api_keys.delete(ops.id)
    spare = org.projects.create(name="spare")
    org.projects.archive(spare.id)

    log = events(admin)
    assert [e.effective_at for e in log] == sorted((e.effective_at for e in log), reverse=True)  # newest first
    assert len({e.id for e in log}) == len(log) and all(e.id.startswith("audit_log-") for e in log)
    seen = {(e.type, detail(e)["id"]): e for e in log}
    by_admin = [
        ("project.created", project.id, project.id),
        ("project.updated", project.id, project.id),
        ("service_account.created", account.id, project.id),
        ("api_key.created", account.api_key.id, project.id),
        ("api_key.created", ops.id, None),
        ("api_key.deleted", ops.id, None),
        ("project.created", spare.id, spare.id),
        ("project.archived", spare.id, spare.id),
    ]
    by_member = [
        ("file.created", f.id),
        ("file.deleted", gone.id),
        ("upload.created", up.id),
        ("upload.completed", up.id),
        ("file.created", completed.file.id),
        ("upload.cancelled", cancelled.id),
        ("fine_tuning.job.created", job.id),
        ("fine_tuning.job.paused", job.id),
        ("fine_tuning.job.resumed", job.id),
        ("fine_tuning.job.cancelled", job.id),
        ("model.deleted", model),
        ("service_account.created", other.id),
        ("api_key.created", other.api_key.id),
        ("api_key.deleted", other.api_key.id),
        ("service_account.deleted", other.id),
    ]
    for type, resource, project_id in by_admin:
        e = seen[(type, resource)]
        assert e.actor.type == "api_key" and e.actor.api_key.id == "bootstrap" and e.actor.api_key.type == "admin"
        assert (e.project.id if e.project else None) == project_id
    for type, resource in by_member:
        e = seen[(type, resource)]
        key = e.actor.api_key
        assert key.id == account.api_key.id and key.type == "service_account"
        assert key.service_account.id == account.id
        assert e.project.id == project.id and e.project.name == "Team A2"
    assert seen[("project.created", project.id)].model_extra["project.created"]["data"] == {"name": "Team A"}
    assert seen[("fine_tuning.job.created", job.id)].model_extra["fine_tuning.job.created"]["data"]["model"] == TINY
    assert {t for t, _ in seen} <= {str(t) for t in EventType}

    # No secret: no key's value, no key's hash, anywhere in the log.
    raw = srv.http.get("/v1/organization/audit_logs?limit=1000", headers={"authorization": f"Bearer {BOOTSTRAP}"})
    assert raw.status_code == 200 and raw.json()["object"] == "list"
    for value in (member_key, other.api_key.value, ops.value, BOOTSTRAP):
        assert value not in raw.text and tenancy.key_digest(value) not in raw.text
    assert "key_hash" not in raw.text

    # Filters.
    files = events(admin, event_types=["file.created"])
    assert {detail(e)["id"] for e in files} == {f.id, gone.id, completed.file.id}
    assert {e.type for e in events(admin, event_types=["upload.cancelled", "model.deleted"])} == {
        "upload.cancelled",
        "model.deleted",
    }
    in_spare = events(admin, project_ids=[spare.id])
    assert [e.type for e in in_spare] == ["project.archived", "project.created"]
    on_job = events(admin, resource_ids=[job.id])
    assert [e.type for e in on_job] == [
        "fine_tuning.job.cancelled",
        "fine_tuning.job.resumed",
        "fine_tuning.job.paused",
        "fine_tuning.job.created",
    ]
    assert {e.type for e in events(admin, actor_ids=[account.id])} == {t for t, _ in by_member}
    assert events(admin, actor_ids=[account.api_key.id]) == events(admin, actor_ids=[account.id])
    assert events(admin, actor_emails=["someone@example.com"]) == []
    assert events(admin, event_types=["user.added"]) == []
    first = log[-1].effective_at
    assert len(events(admin, effective_at={"gte": first})) == len(log)
    assert events(admin, effective_at={"lt": first}) == []
    assert events(admin, effective_at={"gt": log[0].effective_at}) == []
    assert len(events(admin, effective_at={"lte": log[0].effective_at, "gte": first})) == len(log)

    # Cursor pagination, newest first; `before` pages back.
    page = org.audit_logs.list(limit=3)
    assert [e.id for e in page.data] == [e.id for e in log[:3]] and page.has_more
    nxt = org.audit_logs.list(limit=3, after=page.data[-1].id)
    assert [e.id for e in nxt.data] == [e.id for e in log[3:6]]
    back = org.audit_logs.list(limit=2, before=nxt.data[0].id)
    assert [e.id for e in back.data] == [e.id for e in log[1:3]] and back.has_more
    assert [e.id for e in org.audit_logs.list(limit=1, after="audit_log-none").data] == []
    assert [e.id for e in org.audit_logs.list()] == [e.id for e in log]  # the SDK follows the pages

    # Only an admin: a project key, even its project's owner, gets the 403.
    with pytest.raises(openai.PermissionDeniedError):
        member.admin.organization.audit_logs.list()


def test_each_organization_sees_its_own_log_only(tiny_server_factory):
    srv = tiny_server_factory(api_keys=BOOTSTRAP)
    admin = sdk(srv, BOOTSTRAP)
    mine = admin.admin.organization.projects.create(name="mine")
    with srv.app.state.ctx.db.session() as s:  # `tunery admin create-key --role admin` of another organization
        other_key = tenancy.issue_key(s, CLI, organization_id="org-b", project_id=None, role="admin", name="b")
    srv.app.state.ctx.keys.note_issued()
    other = sdk(srv, other_key.value)
    theirs = other.admin.organization.projects.create(name="theirs")

    log_b = events(other)
    assert [(e.type, detail(e)["id"]) for e in log_b] == [
        ("project.created", theirs.id),
        ("api_key.created", other_key.row.id),
    ]
    assert log_b[1].actor.type == "cli" and log_b[1].actor.api_key is None
    assert log_b[0].actor.api_key.id == other_key.row.id and log_b[0].actor.api_key.type == "admin"
    log_a = events(admin)
    assert [(e.type, detail(e)["id"]) for e in log_a] == [("project.created", mine.id)]
    # Neither a filter nor a cursor reaches the other organization's events.
    assert events(admin, resource_ids=[theirs.id]) == [] and events(admin, project_ids=[theirs.id]) == []
    assert admin.admin.organization.audit_logs.list(after=log_b[0].id).data == []


def test_open_access_and_key_last_use(tiny_server_factory, monkeypatch):
    srv = tiny_server_factory()  # no keys: open
    f = srv.client.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    open_client = sdk(srv, "any-key")
    (e,) = events(open_client)
    assert (e.type, detail(e)["id"], e.actor.type, e.project.id) == (
        "file.created",
        f.id,
        "open_access",
        "proj_default",
    )

    # last_used_at: set on a key's first use, then at most once a minute, without a write per request.
    made = open_client.admin.organization.admin_api_keys.create(name="ops")
    assert made.last_used_at is None
    assert made.value
    admin = sdk(srv, made.value)
    before = now()
    listed = admin.admin.organization.admin_api_keys.retrieve(made.id)
    assert listed.last_used_at is not None and listed.last_used_at >= before
    db = srv.app.state.ctx.db

    def used_at(value: int | None = None) -> int | None:
        with db.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.id == made.id))
            assert row is not None
            if value is not None:
                row.last_used_at = value
            return row.last_used_at

    half_a_minute_ago = used_at(now() - 30)
    admin.models.list()
    assert admin.admin.organization.admin_api_keys.retrieve(made.id).last_used_at == half_a_minute_ago
    assert used_at() == half_a_minute_ago  # not written again within the minute
    used_at(now() - 61)
    admin.models.list()
    assert (used_at() or 0) >= now() - 1

    project = admin.admin.organization.projects.create(name="p")
    account = admin.admin.organization.projects.service_accounts.create(project.id, name="ci")
    assert account.api_key is not None
    sdk(srv, account.api_key.value).models.list()
    key = admin.admin.organization.projects.api_keys.retrieve(account.api_key.id, project_id=project.id)
    assert key.last_used_at is not None and key.last_used_at >= before


def test_tunery_admin_audit_prints_the_log(tmp_path, tiny_server_factory):
    from typer.testing import CliRunner

    from api.cli import app
    from tests.api.test_cli import _env

    runner = CliRunner()
    srv = tiny_server_factory(data_dir=tmp_path / "data")
    database = srv.settings.database_url  # the server's store, SQLite in the data dir or PostgreSQL
    env = _env(tmp_path, **({"TUNERY_DATABASE_URL": database} if database else {}))
    owner = runner.invoke(app, ["admin", "bootstrap", "--project", "Team A"], env=env)
    assert owner.exit_code == 0, owner.output
    key = owner.stdout.strip()
    time.sleep(1.1)  # the server notices keys issued by another process within a second
    f = sdk(srv, key).files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    assert runner.invoke(app, ["admin", "create-key", "--role", "admin"], env=env).exit_code == 0

    out = runner.invoke(app, ["admin", "audit"], env=env)
    assert out.exit_code == 0, out.output
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert [line[1] for line in lines] == [
        "api_key.created",
        "file.created",
        "api_key.created",
        "service_account.created",
        "project.created",
    ]
    assert lines[1][4] == f.id and lines[1][2].startswith("key_") and "(svc_acct_" in lines[1][2]
    assert lines[-1][2] == "cli" and lines[0][3] == "(organization)"
    assert key not in out.stdout and tenancy.key_digest(key) not in out.stdout
    only = runner.invoke(app, ["admin", "audit", "--type", "file.created", "--limit", "5"], env=env)
    assert [line.split("\t")[4] for line in only.stdout.splitlines()] == [f.id]
    assert len(runner.invoke(app, ["admin", "audit", "--limit", "2"], env=env).stdout.splitlines()) == 2
