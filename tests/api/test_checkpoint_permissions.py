"""Checkpoint permissions (OpenAI's ``checkpoint.permission``): a project's owner shares a fine-tuned or checkpoint
model with another project, which may then see it, chat with it and fine-tune from it, until the permission is
deleted; nobody else gains anything, and the grantee can neither delete nor share it on. Through the official SDK."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY, RunningServer, chat_lines
from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tests.serving_fixtures import make_adapter
from tunery.db import FineTunedModel
from tunery.db.ops import now

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
MODEL = "ft:tiny-llama:personal:shared:AbCd1234"
CHECKPOINT = MODEL + ":ckpt-step-2"
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class World:
    srv: RunningServer
    projects: dict[str, str]
    keys: dict[str, str]

    def client(self, who: str) -> OpenAI:
        return self.srv.client.with_options(api_key=self.keys[who])


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("shared") / "adapter", seed=3)


@pytest.fixture
def world(tiny_server_factory: Callable[..., RunningServer], adapter_dir: Path) -> World:
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0, serving_max_new_tokens=4)
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    projects: dict[str, str] = {}
    keys: dict[str, str] = {"admin": BOOTSTRAP}
    for name in ("A", "B", "C"):
        projects[name] = srv.http.post("/v1/organization/projects", json={"name": name}, headers=admin).json()["id"]
        for role in ("owner", "member", "reader"):
            made = srv.http.post(
                f"/v1/organization/projects/{projects[name]}/service_accounts",
                json={"name": f"{name}-{role}", "role": role},
                headers=admin,
            )
            keys[f"{name}-{role}"] = made.json()["api_key"]["value"]
    ctx = srv.app.state.ctx
    for model, prefix in ((MODEL, "jobs/ftjob-shared/model/"), (CHECKPOINT, "jobs/ftjob-shared/checkpoints/step-2/")):
        ctx.store.put_dir(prefix, adapter_dir)
        with ctx.db.session() as s:
            s.add(
                FineTunedModel(
                    id=model,
                    kind="checkpoint" if "ckpt" in model else "fine_tuned",
                    base_model=TINY,
                    job_id="ftjob-shared",
                    object_prefix=prefix,
                    owned_by="personal",
                    organization_id=ctx.settings.organization_id,
                    project_id=projects["A"],
                    created_at=now(),
                )
            )
    return World(srv, projects, keys)


def uses(world: World, who: str, model: str) -> dict[str, Any]:
    """What ``who`` can do with ``model``: see it, chat with it, fine-tune from it (its statuses)."""
    client = world.client(who)
    out: dict[str, Any] = {"listed": model in {m.id for m in client.models.list()}}
    for name, call in (
        ("retrieve", lambda: client.models.retrieve(model)),
        ("chat", lambda: client.chat.completions.create(model=model, messages=HI, max_tokens=2)),
    ):
        try:
            call()
            out[name] = 200
        except openai.APIStatusError as e:
            out[name] = e.status_code
    if who.endswith("reader"):
        return out  # a reader may not upload or create jobs at all
    f = client.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune")
    r = world.srv.http.post(
        "/v1/fine_tuning/jobs/dry_run",
        json={"model": model, "training_file": f.id},
        headers={"authorization": f"Bearer {world.keys[who]}"},
    )
    out["fine_tune"] = r.status_code if r.status_code != 400 else r.json()["error"]["code"]
    return out


NONE = {"listed": False, "retrieve": 404, "chat": 404, "fine_tune": "model_not_available"}
ALL = {"listed": True, "retrieve": 200, "chat": 200, "fine_tune": 200}


def test_a_shared_model_is_usable_by_the_grantee_alone_until_the_permission_is_deleted(world: World) -> None:
    owner = world.client("A-owner")
    assert uses(world, "B-member", MODEL) == NONE
    page = owner.fine_tuning.checkpoints.permissions.create(MODEL, project_ids=[world.projects["B"]])
    (permission,) = page.data
    assert permission.object == "checkpoint.permission" and permission.id.startswith("cp_")
    assert permission.project_id == world.projects["B"]
    assert uses(world, "B-member", MODEL) == ALL
    # A reader of the grantee sees it and may chat with it, as with its own models.
    assert uses(world, "B-reader", MODEL) == {"listed": True, "retrieve": 200, "chat": 200}
    assert uses(world, "C-member", MODEL) == NONE  # nobody else
    assert uses(world, "B-member", CHECKPOINT) == NONE  # the model's permission is not its checkpoints'
    # The grantee can neither delete it nor share it on.
    with pytest.raises(openai.PermissionDeniedError):
        world.client("B-member").models.delete(MODEL)
    with pytest.raises(openai.NotFoundError):
        world.client("B-owner").fine_tuning.checkpoints.permissions.create(MODEL, project_ids=[world.projects["C"]])
    # A job of B's on A's model, created while shared.
    f = world.client("B-member").files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune")
    job = world.client("B-member").fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    assert job.model == MODEL
    deleted = owner.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=MODEL)
    assert deleted.deleted and deleted.id == permission.id and deleted.object == "checkpoint.permission"
    assert uses(world, "B-member", MODEL) == NONE  # at once
    assert uses(world, "A-member", MODEL) == ALL  # its own project is unaffected


def test_sharing_a_checkpoint_shares_that_checkpoint(world: World) -> None:
    world.client("A-owner").fine_tuning.checkpoints.permissions.create(CHECKPOINT, project_ids=[world.projects["C"]])
    assert uses(world, "C-member", CHECKPOINT) == ALL
    assert uses(world, "C-member", MODEL) == NONE


def test_who_may_share_list_and_delete(world: World) -> None:
    a, b, c = world.projects["A"], world.projects["B"], world.projects["C"]
    for who in ("A-member", "A-reader"):
        with pytest.raises(openai.PermissionDeniedError):
            world.client(who).fine_tuning.checkpoints.permissions.create(MODEL, project_ids=[b])
        with pytest.raises(openai.PermissionDeniedError):
            world.client(who).fine_tuning.checkpoints.permissions.list(MODEL)
    # Another project's owner: the model does not exist for it (404, never a 403 that confirms it).
    with pytest.raises(openai.NotFoundError):
        world.client("B-owner").fine_tuning.checkpoints.permissions.list(MODEL)
    # The organization's admin may share any project's model.
    world.client("admin").fine_tuning.checkpoints.permissions.create(MODEL, project_ids=[b])
    again = world.client("A-owner").fine_tuning.checkpoints.permissions.create(MODEL, project_ids=[b, c, b])
    assert [p.project_id for p in again.data] == [b, c]  # B's permission is kept, not doubled
    listed = world.client("A-owner").fine_tuning.checkpoints.permissions.list(MODEL, limit=1)
    assert [p.project_id for p in listed.data] == [c] and listed.has_more  # newest first
    assert [p.project_id for p in listed.get_next_page().data] == [b]  # the SDK pages by last_id
    only_b = world.client("A-owner").fine_tuning.checkpoints.permissions.list(MODEL, project_id=b)
    assert [p.project_id for p in only_b.data] == [b]
    ascending = world.client("A-owner").fine_tuning.checkpoints.permissions.list(MODEL, order="ascending")
    assert [p.project_id for p in ascending.data] == [b, c]
    # Refusals: an unknown project, the owner's own project, an unknown permission.
    for project_ids, code in (([b, "proj_nope"], "project_not_found"), ([a], "invalid_value"), ([], None)):
        with pytest.raises(openai.BadRequestError) as caught:
            world.client("A-owner").fine_tuning.checkpoints.permissions.create(MODEL, project_ids=project_ids)
        assert caught.value.body["param"] == "project_ids" and caught.value.body["code"] == code  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        world.client("A-owner").fine_tuning.checkpoints.permissions.delete("cp_nope", fine_tuned_model_checkpoint=MODEL)


def test_deleting_the_model_deletes_its_permissions(world: World) -> None:
    owner = world.client("A-owner")
    owner.fine_tuning.checkpoints.permissions.create(MODEL, project_ids=[world.projects["B"]])
    owner.models.delete(MODEL)
    assert uses(world, "B-member", MODEL) == NONE
    with world.srv.app.state.ctx.db.session() as s:
        from sqlalchemy import func, select

        from tunery.db import CheckpointPermission

        assert s.scalar(select(func.count()).select_from(CheckpointPermission)) == 0
