"""Model aliases (``/v1/tunery/aliases``, docs/aliases.md): a stable name of a project for one of its models. A chat
through the official SDK naming the alias is served by its current model (and answers under the alias's name); a
re-point or a rollback changes that at the next request and is kept as a version (who, when, from, to, with the
model's eval report); bad names are a 400 naming ``name``; another project's alias does not exist for a key; readers
read and may not write; a model an alias points at cannot be deleted from under it. On both configurations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import select

from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, RunningServer, chat_lines
from tests.serving_fixtures import make_adapter
from tunery.db import Checkpoint, FineTunedModel, Job
from tunery.db.ops import now

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
A = "/v1/tunery/aliases"
HI = [{"role": "user", "content": "Hi"}]
JOB_REPORT = {"file": "file-evaljob", "summary": {"accuracy": 0.75}}
CKPT_REPORT = {"file": "file-evalckpt", "summary": {"accuracy": 0.5}}


@dataclass
class World:
    srv: RunningServer
    projects: dict[str, str]
    keys: dict[str, str]  # who -> key value
    key_ids: dict[str, str]  # who -> key id (key_…)
    accounts: dict[str, str]  # who -> service account id
    ft: str  # A's fine-tuned model (its job has an eval report)
    ckpt: str  # A's checkpoint model (its checkpoint has an eval report)
    b_model: str  # B's own fine-tuned model

    def client(self, who: str) -> OpenAI:
        return self.srv.client.with_options(api_key=self.keys[who])

    def call(self, who: str, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[who]}"}
        return self.srv.http.request(method, path, json=body, params=params or None, headers=headers)

    def answer(self, who: str, model: str) -> tuple[str, str]:
        """A greedy chat through the SDK: (the answer's text, the model it names)."""
        r = self.client(who).chat.completions.create(model=model, messages=HI, max_tokens=8, temperature=0, seed=1)
        return r.choices[0].message.content or "", r.model


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("aliases")
    return make_adapter(tiny_model_dir, root / "one", seed=3), make_adapter(tiny_model_dir, root / "two", seed=7)


@pytest.fixture
def world(tiny_server_factory: Callable[..., RunningServer], adapter_dirs: tuple[Path, Path]) -> World:
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0, serving_max_new_tokens=8)  # nothing trains
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    projects: dict[str, str] = {}
    keys, key_ids, accounts = {"admin": BOOTSTRAP}, {}, {}
    for name in ("A", "B"):
        projects[name] = srv.http.post("/v1/organization/projects", json={"name": name}, headers=admin).json()["id"]
        for role in ("owner", "member", "reader"):
            made = srv.http.post(
                f"/v1/organization/projects/{projects[name]}/service_accounts",
                json={"name": f"{name}-{role}", "role": role},
                headers=admin,
            ).json()
            who = f"{name}-{role}"
            keys[who], key_ids[who], accounts[who] = made["api_key"]["value"], made["api_key"]["id"], made["id"]
    ctx = srv.app.state.ctx
    jobs = {}
    for name in ("A", "B"):  # a job of each project (queued: nothing trains) for its models to come from
        member = {"authorization": f"Bearer {keys[f'{name}-member']}"}
        f = srv.http.post(
            "/v1/files", files={"file": ("t.jsonl", chat_lines(12))}, data={"purpose": "fine-tune"}, headers=member
        ).json()["id"]
        jobs[name] = srv.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": f}, headers=member)
        jobs[name] = jobs[name].json()["id"]
    ft = f"ft:{TINY}:personal:one:{jobs['A'][6:14]}"
    ckpt = ft + ":ckpt-step-2"
    b_model = f"ft:{TINY}:personal:bee:{jobs['B'][6:14]}"
    made = ((ft, "A", adapter_dirs[0]), (ckpt, "A", adapter_dirs[1]), (b_model, "B", adapter_dirs[0]))
    for model, project, folder in made:
        prefix = f"jobs/{jobs[project]}/{'checkpoints/step-2' if 'ckpt' in model else 'model'}/"
        ctx.store.put_dir(prefix, folder)
        with ctx.db.session() as s:
            s.add(
                FineTunedModel(
                    id=model,
                    kind="checkpoint" if "ckpt" in model else "fine_tuned",
                    base_model=TINY,
                    job_id=jobs[project],
                    object_prefix=prefix,
                    owned_by="personal",
                    organization_id=ctx.settings.organization_id,
                    project_id=projects[project],
                    created_at=now(),
                )
            )
    with ctx.db.session() as s:  # the eval reports the trainer would store (migration 0012)
        job = s.scalar(select(Job).where(Job.id == jobs["A"]))
        assert job is not None
        job.eval_report = JOB_REPORT
        s.add(
            Checkpoint(
                id="ftckpt_aliases",
                job_id=jobs["A"],
                created_at=now(),
                step_number=2,
                metrics={},
                fine_tuned_model_checkpoint=ckpt,
                object_prefix=f"jobs/{jobs['A']}/checkpoints/step-2/",
                eval_report=CKPT_REPORT,
            )
        )
    return World(srv, projects, keys, key_ids, accounts, ft, ckpt, b_model)


def error(r: httpx.Response) -> tuple[int, str | None, str | None]:
    body = r.json()["error"]
    return r.status_code, body["param"], body["code"]


def test_chat_follows_the_alias_through_repoint_and_rollback_and_the_history_keeps_every_version(
    world: World,
) -> None:
    ft, ckpt = world.ft, world.ckpt
    one, _ = world.answer("A-member", ft)
    two, _ = world.answer("A-member", ckpt)
    assert one != two  # two different models, so the answers below say which one served the alias
    started = now()

    made = world.call("A-member", "POST", A, {"name": "support-bot", "model": ft, "note": "first"})
    assert made.status_code == 200, made.text
    alias = made.json()
    assert alias["id"].startswith("alias_") and alias["object"] == "tunery.alias"
    assert (alias["name"], alias["model"], alias["version"]) == ("support-bot", ft, 1)
    assert world.answer("A-member", "support-bot") == (one, "support-bot")  # served by ft, named as sent
    assert world.answer("A-reader", "support-bot") == (one, "support-bot")  # a reader may chat with it
    model = world.client("A-member").models.retrieve("support-bot")
    assert (model.id, model.owned_by) == ("support-bot", "personal")
    # Legacy completions resolve it too: the embedded engine then refuses them (a 400), not the name (a 404).
    with pytest.raises(openai.BadRequestError):
        world.client("A-member").completions.create(model="support-bot", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        world.client("A-member").completions.create(model="no-such-bot", prompt="Hi", max_tokens=2)

    # Re-point: one call, effective at the next request.
    moved = world.call("A-member", "POST", f"{A}/support-bot", {"model": ckpt, "note": "step 2 evals better"})
    assert (moved.status_code, moved.json()["model"], moved.json()["version"]) == (200, ckpt, 2)
    assert moved.json()["id"] == alias["id"] and moved.json()["created_at"] == alias["created_at"]
    assert world.answer("A-member", "support-bot") == (two, "support-bot")
    same = world.call("A-member", "POST", f"{A}/support-bot", {"model": ckpt})  # already there: no new version
    assert same.json()["version"] == 2
    # Rollback: to the model before the current version; twice is back where it was (as helm rollback).
    back = world.call("A-owner", "POST", f"{A}/support-bot/rollback")
    assert (back.status_code, back.json()["model"], back.json()["version"]) == (200, ft, 3), back.text
    assert world.answer("A-member", "support-bot") == (one, "support-bot")
    again = world.call("A-member", "POST", f"{A}/support-bot/rollback", {"note": "undo"})
    assert (again.json()["model"], again.json()["version"]) == (ckpt, 4)
    to_one = world.call("A-member", "POST", f"{A}/support-bot/rollback", {"to_version": 1})
    assert (to_one.json()["model"], to_one.json()["version"]) == (ft, 5)
    assert world.answer("A-member", "support-bot") == (one, "support-bot")
    for to_version, code in ((5, "invalid_value"), (3, "invalid_value"), (9, "invalid_value"), (0, None)):
        refused = world.call("A-member", "POST", f"{A}/support-bot/rollback", {"to_version": to_version})
        assert error(refused) == (400, "to_version", code), (to_version, refused.text)
    assert world.call("A-member", "GET", f"{A}/support-bot").json()["version"] == 5  # the refusals changed nothing

    history = world.call("A-reader", "GET", f"{A}/support-bot/history").json()
    versions = history["data"]
    assert history["object"] == "list" and not history["has_more"]
    assert [(v["version"], v["action"], v["previous_model"], v["model"]) for v in versions] == [
        (5, "rolled_back", ckpt, ft),
        (4, "rolled_back", ft, ckpt),
        (3, "rolled_back", ckpt, ft),
        (2, "updated", ft, ckpt),
        (1, "created", None, ft),
    ]
    assert [v["note"] for v in versions] == [None, "undo", None, "step 2 evals better", "first"]
    owner = {"type": "api_key", "id": world.key_ids["A-owner"], "service_account_id": world.accounts["A-owner"]}
    member = {"type": "api_key", "id": world.key_ids["A-member"], "service_account_id": world.accounts["A-member"]}
    assert [v["actor"] for v in versions] == [member, member, owner, member, member]
    assert all(started <= v["created_at"] <= now() for v in versions)
    assert all(v["object"] == "tunery.alias.version" and v["alias"] == "support-bot" for v in versions)
    # Each version carries its model's eval report: the job's for the final model, the checkpoint's for a checkpoint.
    assert [v["eval_report"] for v in versions] == [JOB_REPORT, CKPT_REPORT, JOB_REPORT, CKPT_REPORT, JOB_REPORT]
    assert (history["first_id"], history["last_id"]) == (versions[0]["id"], versions[-1]["id"])
    first = world.call("A-member", "GET", f"{A}/support-bot/history", limit=2).json()
    assert [v["version"] for v in first["data"]] == [5, 4] and first["has_more"]
    rest = world.call("A-member", "GET", f"{A}/support-bot/history", limit=2, after=first["last_id"]).json()
    assert [v["version"] for v in rest["data"]] == [3, 2] and rest["has_more"]

    # The audit log has each change, with who made it.
    logged = world.call(
        "admin",
        "GET",
        "/v1/organization/audit_logs",
        **{"resource_ids[]": alias["id"], "limit": 20},
    ).json()["data"]
    assert [e["type"] for e in logged] == [
        "model_alias.rolled_back",
        "model_alias.rolled_back",
        "model_alias.rolled_back",
        "model_alias.updated",
        "model_alias.created",
    ]
    assert logged[2]["actor"]["api_key"]["id"] == world.key_ids["A-owner"]
    assert logged[0][logged[0]["type"]]["data"] == {
        "name": "support-bot",
        "model": ft,
        "previous_model": ckpt,
        "version": 5,
        "to_version": 1,
    }
    assert {e["project"]["id"] for e in logged} == {world.projects["A"]}


def test_the_list_pages_newest_first(world: World) -> None:
    for name in ("a", "b.2", "c_3"):
        assert world.call("A-member", "POST", A, {"name": name, "model": world.ft}).status_code == 200
    listed = world.call("A-reader", "GET", A).json()
    assert [a["name"] for a in listed["data"]] == ["c_3", "b.2", "a"] and not listed["has_more"]
    assert listed["object"] == "list" and listed["first_id"] == listed["data"][0]["id"]
    page = world.call("A-member", "GET", A, limit=2).json()
    assert [a["name"] for a in page["data"]] == ["c_3", "b.2"] and page["has_more"]
    tail = world.call("A-member", "GET", A, limit=2, after=page["last_id"]).json()
    assert [a["name"] for a in tail["data"]] == ["a"] and not tail["has_more"]
    assert world.call("A-member", "GET", A, after="alias_nope").json()["data"] == []


@pytest.mark.parametrize(
    "name",
    ["", "Support-Bot", "ft:tiny-llama:personal:x:AbCd1234", "ft:bot", "a b", "-lead", ".", "..", "a/b", "x" * 65,
     "émoji", TINY],
)  # fmt: skip
def test_a_bad_name_is_a_400_naming_name(world: World, name: str) -> None:
    r = world.call("A-member", "POST", A, {"name": name, "model": world.ft})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == "name"
    assert world.call("A-member", "GET", A).json()["data"] == []


def test_what_an_alias_may_be_called_and_point_at(world: World) -> None:
    for name in ("a", "v1.2_rc-3", "x" * 64, "0day"):
        assert world.call("A-member", "POST", A, {"name": name, "model": world.ckpt}).status_code == 200, name
    twice = world.call("A-member", "POST", A, {"name": "a", "model": world.ft})
    assert error(twice) == (400, "name", "alias_exists")
    assert error(world.call("A-member", "POST", A, {"name": "b", "model": TINY})) == (400, "model", "invalid_value")
    for model in ("ft:tiny-llama:personal:x:nope1234", "a", world.b_model):  # unknown, an alias, B's model
        assert error(world.call("A-member", "POST", A, {"name": "b", "model": model})) == (
            404,
            "model",
            "model_not_found",
        ), model
    assert error(world.call("A-member", "POST", f"{A}/a", {"model": "x" * 64})) == (404, "model", "model_not_found")
    unknown = world.call("A-member", "POST", A, {"name": "b", "model": world.ft, "colour": "red"})
    assert error(unknown)[:2] == (400, "colour")  # every field is Tunery's: an unknown one is refused
    assert error(world.call("A-member", "POST", f"{A}/nope/rollback")) == (404, "name", "alias_not_found")


def test_another_projects_alias_is_not_found(world: World) -> None:
    assert world.call("A-member", "POST", A, {"name": "support-bot", "model": world.ft}).status_code == 200
    for method, path, body in (
        ("GET", f"{A}/support-bot", None),
        ("GET", f"{A}/support-bot/history", None),
        ("POST", f"{A}/support-bot", {"model": world.b_model}),
        ("POST", f"{A}/support-bot/rollback", None),
        ("DELETE", f"{A}/support-bot", None),
    ):
        assert error(world.call("B-member", method, path, body)) == (404, "name", "alias_not_found"), (method, path)
    with pytest.raises(openai.NotFoundError) as caught:
        world.answer("B-member", "support-bot")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        world.client("B-member").models.retrieve("support-bot")
    assert world.call("B-member", "GET", A).json()["data"] == []
    assert error(world.call("B-member", "POST", A, {"name": "b-bot", "model": world.ft}))[0] == 404  # A's model
    # Names are per project: B has its own `support-bot`, and A's is untouched.
    mine = world.call("B-member", "POST", A, {"name": "support-bot", "model": world.b_model})
    assert mine.status_code == 200 and mine.json()["model"] == world.b_model
    assert world.call("A-member", "GET", f"{A}/support-bot").json()["model"] == world.ft
    assert len(world.call("B-member", "GET", f"{A}/support-bot/history").json()["data"]) == 1

    # A model shared with B may be aliased by B; once the permission is deleted, B's alias is not found in chat.
    owner = world.client("A-owner")
    (permission,) = owner.fine_tuning.checkpoints.permissions.create(world.ft, project_ids=[world.projects["B"]]).data
    assert world.call("B-member", "POST", A, {"name": "shared", "model": world.ft}).status_code == 200
    one, _ = world.answer("A-member", world.ft)
    assert world.answer("B-member", "shared") == (one, "shared")
    assert world.call("B-member", "GET", f"{A}/shared/history").json()["data"][0]["eval_report"] == JOB_REPORT
    owner.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=world.ft)
    with pytest.raises(openai.NotFoundError) as caught:
        world.answer("B-member", "shared")
    assert caught.value.body["code"] == "model_not_found" and "`shared`" in caught.value.message  # type: ignore[index]
    assert world.call("B-member", "GET", f"{A}/shared").json()["model"] == world.ft  # kept, for a re-point
    assert world.call("B-member", "GET", f"{A}/shared/history").json()["data"][0]["eval_report"] is None
    assert error(world.call("B-member", "POST", f"{A}/shared", {"model": world.ft}))[:2] == (404, "model")


def test_readers_read_and_may_not_write(world: World) -> None:
    assert world.call("A-member", "POST", A, {"name": "support-bot", "model": world.ft}).status_code == 200
    for path in (A, f"{A}/support-bot", f"{A}/support-bot/history"):
        assert world.call("A-reader", "GET", path).status_code == 200, path
    for method, path, body in (
        ("POST", A, {"name": "other", "model": world.ft}),
        ("POST", f"{A}/support-bot", {"model": world.ckpt}),
        ("POST", f"{A}/support-bot/rollback", None),
        ("DELETE", f"{A}/support-bot", None),
    ):
        r = world.call("A-reader", method, path, body)
        assert r.status_code == 403 and r.json()["error"]["message"].startswith("You have insufficient"), path
    alias = world.call("A-member", "GET", f"{A}/support-bot").json()
    assert (alias["model"], alias["version"]) == (world.ft, 1)
    assert [a["name"] for a in world.call("A-member", "GET", A).json()["data"]] == ["support-bot"]


def test_a_model_an_alias_points_at_is_not_deleted_and_a_deleted_alias_is_gone(world: World) -> None:
    member = world.client("A-member")
    assert world.call("A-member", "POST", A, {"name": "support-bot", "model": world.ft}).status_code == 200
    assert world.call("A-member", "POST", A, {"name": "canary", "model": world.ft}).status_code == 200
    with pytest.raises(openai.BadRequestError) as caught:
        member.models.delete(world.ft)
    assert caught.value.body["code"] == "model_in_use"  # type: ignore[index]
    assert "`canary`, `support-bot`" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        member.models.delete("support-bot")  # an alias is deleted as an alias, never its model through it
    assert caught.value.body["code"] == "model_is_alias"  # type: ignore[index]
    assert member.models.retrieve(world.ft).id == world.ft  # still there

    deleted = world.call("A-member", "DELETE", f"{A}/canary")
    assert deleted.status_code == 200 and deleted.json()["deleted"] and deleted.json()["name"] == "canary"
    assert error(world.call("A-member", "GET", f"{A}/canary")) == (404, "name", "alias_not_found")
    with pytest.raises(openai.NotFoundError):
        world.answer("A-member", "canary")
    world.call("A-member", "POST", f"{A}/support-bot", {"model": world.ckpt})
    assert member.models.delete(world.ft).deleted  # no alias points at it now
    history = world.call("A-member", "GET", f"{A}/support-bot/history").json()["data"]
    assert [(v["model"], v["eval_report"]) for v in history] == [(world.ckpt, CKPT_REPORT), (world.ft, None)]
    back = world.call("A-member", "POST", f"{A}/support-bot/rollback")  # its previous model is gone
    assert error(back) == (404, "model", "model_not_found")
    # A deleted alias's name is free again: a new alias, from version 1.
    again = world.call("A-member", "POST", A, {"name": "canary", "model": world.ckpt})
    assert again.status_code == 200 and again.json()["version"] == 1
    assert len(world.call("A-member", "GET", f"{A}/canary/history").json()["data"]) == 1
    logged = world.call("admin", "GET", "/v1/organization/audit_logs", **{"event_types[]": "model_alias.deleted"})
    assert [e["model_alias.deleted"]["data"]["name"] for e in logged.json()["data"]] == ["canary"]
