"""Isolation between projects, from one table of every ``/v1`` route (a route without a row fails the test).

Project A holds a file, an upload, a job, a fine-tuned model and an alias of it. Each route that takes an id (in its
path or its body) is tried with A's ids:

* with project B's key: the answer is the one an id that never existed gets (404 for a path id), never a 403 that
  would confirm the object exists, and A's objects are untouched;
* with A's reader key: a write is a 403 before anything is read, a read is served.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from tests.conftest import TINY, chat_lines
from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tests.schema import validate
from tunery.db import FineTunedModel, Job

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Hi"}]


@dataclass(frozen=True)
class Route:
    """One route as the table tries it: a request with A's ids in ``{file}``, ``{upload}``, ``{job}``, ``{model}``,
    ``{alias}``;
    ``read``: whether a reader may call it (then the reader's status); ``foreign``: B's status with A's ids."""

    method: str
    template: str
    path: str = ""
    body: Any = None
    files: bool = False
    read: int | None = None
    foreign: int = 404


T = "/v1/fine_tuning/jobs"
AL = "/v1/tunery/aliases"
EV = "/v1/tunery/evaluations"
EX = "/v1/tunery/exports"
WH = "/v1/webhook_endpoints"
P, P_ = "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}", "/v1/fine_tuning/checkpoints/{model}"
ROUTES = [
    Route("GET", "/v1/files/{file_id}", "/v1/files/{file}", read=200),
    Route("DELETE", "/v1/files/{file_id}", "/v1/files/{file}"),
    Route("GET", "/v1/files/{file_id}/validation", "/v1/files/{file}/validation", read=200),
    Route("GET", "/v1/files/{file_id}/content", "/v1/files/{file}/content", read=200),
    Route("GET", "/v1/files/{file_id}/url", "/v1/files/{file}/url", read=400),  # a presigned URL needs S3
    Route("POST", "/v1/uploads/{upload_id}/parts", "/v1/uploads/{upload}/parts", files=True),
    Route("POST", "/v1/uploads/{upload_id}/complete", "/v1/uploads/{upload}/complete", {"part_ids": ["part_x"]}),
    Route("POST", "/v1/uploads/{upload_id}/cancel", "/v1/uploads/{upload}/cancel"),
    Route("GET", f"{T}/{{job_id}}", f"{T}/{{job}}", read=200),
    Route("POST", f"{T}/{{job_id}}/cancel", f"{T}/{{job}}/cancel"),
    Route("POST", f"{T}/{{job_id}}/pause", f"{T}/{{job}}/pause"),
    Route("POST", f"{T}/{{job_id}}/resume", f"{T}/{{job}}/resume"),
    Route("GET", f"{T}/{{job_id}}/events", f"{T}/{{job}}/events", read=200),
    Route("GET", f"{T}/{{job_id}}/checkpoints", f"{T}/{{job}}/checkpoints", read=200),
    # A's job has not run: a reader gets past the door to "no eval report yet" (tests/e2e/test_eval_reports.py reads
    # written ones); B gets "no such job".
    Route("GET", f"{T}/{{job_id}}/eval_report", f"{T}/{{job}}/eval_report", read=404),
    Route(
        "GET",
        f"{T}/{{job_id}}/checkpoints/{{checkpoint_id}}/eval_report",
        f"{T}/{{job}}/checkpoints/ftckpt_x/eval_report",
        read=404,
    ),
    Route("GET", "/v1/models/{model:path}", "/v1/models/{model}", read=200),
    Route("DELETE", "/v1/models/{model:path}", "/v1/models/{model}"),
    # A's model has no manifest here: a reader gets past the door to the 400 (model_incomplete);
    # tests/api/test_model_archive.py downloads complete ones.
    Route("GET", "/v1/tunery/models/{model:path}/archive", "/v1/tunery/models/{model}/archive", read=400),
    # Sharing a model is for its project's owner: a member of any project is refused before the model is looked up
    # (the same 403 for A's model and one that never existed). tests/api/test_checkpoint_permissions.py has the rest.
    Route("POST", f"{P}/permissions", f"{P_}/permissions", {"project_ids": ["proj_x"]}, foreign=403),
    Route("GET", f"{P}/permissions", f"{P_}/permissions", foreign=403),
    Route("DELETE", f"{P}/permissions/{{permission_id}}", f"{P_}/permissions/cp_x", foreign=403),
    # Aliases (Tunery's extension): another project's alias is not found, its model neither (create).
    Route("POST", AL, AL, {"name": "b-bot", "model": "{model}"}),
    Route("GET", f"{AL}/{{name}}", f"{AL}/{{alias}}", read=200),
    Route("POST", f"{AL}/{{name}}", f"{AL}/{{alias}}", {"model": "{model}"}),
    Route("DELETE", f"{AL}/{{name}}", f"{AL}/{{alias}}"),
    Route("GET", f"{AL}/{{name}}/history", f"{AL}/{{alias}}/history", read=200),
    Route("POST", f"{AL}/{{name}}/rollback", f"{AL}/{{alias}}/rollback"),
    # Evaluations (Tunery's extension, docs/evals.md): A's has not run (no report yet); B's own evaluation of A's model
    # is the model's 404.
    Route("GET", f"{EV}/{{evaluation_id}}", f"{EV}/{{evaluation}}", read=200),
    Route("POST", f"{EV}/{{evaluation_id}}/cancel", f"{EV}/{{evaluation}}/cancel"),
    Route("GET", f"{EV}/{{evaluation_id}}/report", f"{EV}/{{evaluation}}/report", read=404),
    Route("POST", EV, EV, {"model": "{model}", "file": "{file}"}),
    # Exports (Tunery's extension, docs/exports.md): A's has not run; B's own export of A's model is the model's 404.
    Route("GET", f"{EX}/{{export_id}}", f"{EX}/{{export}}", read=200),
    Route("POST", f"{EX}/{{export_id}}/cancel", f"{EX}/{{export}}/cancel"),
    Route("POST", EX, EX, {"model": "{model}"}),
    # Webhook endpoints are for a project's owner (and the admin): a member of any project, or a reader, is refused
    # before an endpoint is looked up. tests/api/test_webhooks.py has another project's owner's 404s.
    Route("POST", WH, WH, {"name": "b", "url": "https://8.8.8.8/"}, foreign=403),
    Route("GET", WH, WH, foreign=403),
    Route("GET", f"{WH}/{{webhook_endpoint_id}}", f"{WH}/whep_x", foreign=403),
    Route("POST", f"{WH}/{{webhook_endpoint_id}}", f"{WH}/whep_x", {"name": "b"}, foreign=403),
    Route("DELETE", f"{WH}/{{webhook_endpoint_id}}", f"{WH}/whep_x", foreign=403),
    Route("GET", f"{WH}/{{webhook_endpoint_id}}/deliveries", f"{WH}/whep_x/deliveries", foreign=403),
    Route(
        "POST",
        f"{WH}/{{webhook_endpoint_id}}/deliveries/{{delivery_id}}/redeliver",
        f"{WH}/whep_x/deliveries/whdel_x/redeliver",
        foreign=403,
    ),
    # A project's secrets are its owner's too (tests/api/test_integrations.py has the owner's own answers).
    Route("GET", "/v1/tunery/secrets", "/v1/tunery/secrets", foreign=403),
    Route("POST", "/v1/tunery/secrets/{name}", "/v1/tunery/secrets/WANDB_API_KEY", {"value": "v"}, foreign=403),
    Route("DELETE", "/v1/tunery/secrets/{name}", "/v1/tunery/secrets/WANDB_API_KEY", foreign=403),
    # Ids in the body. A job on another project's file, or one that never existed, is the same 400.
    Route("POST", T, T, {"model": TINY, "training_file": "{file}"}, foreign=400),
    Route("POST", f"{T}/dry_run", f"{T}/dry_run", {"model": TINY, "training_file": "{file}"}, foreign=400),
    # A reader may chat and embed: its request here lacks `messages` or `input` (a 400 after the door), so nothing runs.
    Route("POST", "/v1/chat/completions", body={"model": "{model}", "messages": MESSAGES}, read=400),
    Route("POST", "/v1/completions", body={"model": "{model}", "prompt": "Hi"}, read=400),
    Route("POST", "/v1/chat/completions", body={"model": "{alias}", "messages": MESSAGES}, read=400),
    Route("POST", "/v1/embeddings", body={"model": "{model}", "input": "Hi"}, read=400),
]
# The routes without an id: lists (each shows B none of A's objects) and creations (a 403 for a reader).
LISTS = {"/v1/files", "/v1/fine_tuning/jobs", "/v1/models", AL, EV, EX}
CREATIONS = {("POST", "/v1/files"), ("POST", "/v1/uploads")}
# Routes that read and store nothing of any project (graders): every role may call them, with no ids to try.
GRADER = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"}
STATELESS = {
    ("POST", "/v1/fine_tuning/alpha/graders/run"): {"grader": GRADER, "model_sample": "a"},
    ("POST", "/v1/fine_tuning/alpha/graders/validate"): {"grader": GRADER},
    ("GET", "/v1/tunery/me"): None,  # who the key is: its own project and role
}


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (m, r.path)
        for r in iter_route_contexts(app.routes)
        if isinstance(r.path, str) and r.path.startswith("/v1/") and not r.path.startswith("/v1/organization/")
        for m in r.methods or ()
    }


def fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], value)
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


def call(http: httpx.Client, key: str, route: Route, ids: dict[str, str], *, reader: bool = False) -> httpx.Response:
    body = fill(route.body, ids)
    if reader and route.template in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        body = {"model": TINY}
    kwargs: dict[str, Any] = {"headers": {"authorization": f"Bearer {key}"}}
    if route.files:
        kwargs["files"] = {"data": ("part", b"{}\n")}
    elif body is not None:
        kwargs["json"] = body
    return http.request(route.method, fill(route.path or route.template, ids), **kwargs)


@pytest.fixture
def two_projects(tiny_server_factory):  # type: ignore[no-untyped-def]
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0)  # nothing trains: the job stays queued
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    keys: dict[str, str] = {}
    projects: dict[str, str] = {}
    for name in ("A", "B"):
        projects[name] = srv.http.post("/v1/organization/projects", json={"name": name}, headers=admin).json()["id"]
        for role in ("member", "reader"):
            made = srv.http.post(
                f"/v1/organization/projects/{projects[name]}/service_accounts",
                json={"name": f"{name}-{role}", "role": role},
                headers=admin,
            )
            keys[f"{name}-{role}"] = made.json()["api_key"]["value"]
    a = {"authorization": f"Bearer {keys['A-member']}"}
    file_id = srv.http.post(
        "/v1/files", files={"file": ("t.jsonl", chat_lines(40))}, data={"purpose": "fine-tune"}, headers=a
    ).json()["id"]
    job_id = srv.http.post(T, json={"model": TINY, "training_file": file_id}, headers=a).json()["id"]
    upload = {"purpose": "fine-tune", "filename": "u.jsonl", "bytes": 3, "mime_type": "text/jsonl"}
    upload_id = srv.http.post("/v1/uploads", json=upload, headers=a).json()["id"]
    model = f"ft:{TINY}:personal:a:{job_id[6:14]}"
    with srv.app.state.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        assert job is not None and job.project_id == projects["A"]
        s.add(
            FineTunedModel(
                id=model,
                kind="fine_tuned",
                base_model=TINY,
                job_id=job_id,
                object_prefix=f"jobs/{job_id}/adapter",
                owned_by="personal",
                created_at=int(time.time()),
                organization_id=job.organization_id,
                project_id=job.project_id,
            )
        )
    alias = srv.http.post(AL, json={"name": "support-bot", "model": model}, headers=a)
    assert alias.status_code == 200, alias.text
    deadline = time.monotonic() + 30  # an evaluation takes the plan of the model's job: resolved once it is queued
    while srv.http.get(f"{T}/{job_id}", headers=a).json()["status"] != "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    evaluation = srv.http.post(EV, json={"model": model, "file": file_id}, headers=a)
    assert evaluation.status_code == 200, evaluation.text
    ids = {"file": file_id, "job": job_id, "upload": upload_id, "model": model, "alias": "support-bot"}
    ids["evaluation"] = evaluation.json()["id"]
    export = srv.http.post(EX, json={"model": model}, headers=a)
    assert export.status_code == 200, export.text
    ids["export"] = export.json()["id"]
    return srv, keys, ids


def test_the_table_covers_every_route(two_projects):
    srv, _, _ = two_projects
    tabled = {(r.method, r.template) for r in ROUTES} | {("GET", p) for p in LISTS} | CREATIONS | set(STATELESS)
    assert app_routes(srv.app) == tabled


def test_another_projects_ids_are_not_found(two_projects):
    srv, keys, ids = two_projects
    never = {"file": "file-" + "x" * 24, "job": "ftjob-" + "x" * 24, "upload": "upload_" + "x" * 24}
    never["model"] = f"ft:{TINY}:personal:a:xxxxxxxx"
    never["alias"] = "never-bot"
    never["evaluation"] = "evaljob-" + "x" * 24
    never["export"] = "exportjob-" + "x" * 24
    for route in ROUTES:
        theirs = call(srv.http, keys["B-member"], route, ids)
        unknown = call(srv.http, keys["B-member"], route, never)
        cell = f"{route.method} {route.template}"
        assert theirs.status_code == route.foreign, (cell, theirs.text)
        validate(theirs.json(), "ErrorResponse")
        # Nothing tells A's object from one that never existed.
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (
            theirs.status_code,
            theirs.json()["error"]["code"],
        ), cell
    for path in LISTS:
        listed = srv.http.get(path, headers={"authorization": f"Bearer {keys['B-member']}"}).json()["data"]
        assert not {o["id"] for o in listed} & set(ids.values()), path
    # A's objects are untouched, and A sees them.
    a = {"authorization": f"Bearer {keys['A-member']}"}
    assert srv.http.get(f"/v1/files/{ids['file']}", headers=a).status_code == 200
    assert srv.http.get(f"{T}/{ids['job']}", headers=a).json()["status"] in ("validating_files", "queued")
    assert srv.http.get(f"/v1/models/{ids['model']}", headers=a).status_code == 200
    assert ids["model"] in {m["id"] for m in srv.http.get("/v1/models", headers=a).json()["data"]}
    assert srv.http.get(f"{AL}/{ids['alias']}", headers=a).json()["model"] == ids["model"]


def test_a_reader_reads_and_may_not_write(two_projects):
    srv, keys, ids = two_projects
    for route in ROUTES:
        r = call(srv.http, keys["A-reader"], route, ids, reader=True)
        cell = f"{route.method} {route.template}"
        if route.read is None:
            assert r.status_code == 403, (cell, r.text)
            validate(r.json(), "ErrorResponse")
            assert r.json()["error"]["message"].startswith("You have insufficient permissions"), cell
        else:
            assert r.status_code == route.read, (cell, r.text)
    reader = {"authorization": f"Bearer {keys['A-reader']}"}
    for method, path in CREATIONS:
        assert srv.http.request(method, path, headers=reader).status_code == 403, path
    for path in LISTS:
        assert srv.http.get(path, headers=reader).status_code == 200, path
    for (method, path), body in STATELESS.items():
        assert srv.http.request(method, path, json=body, headers=reader).status_code == 200, path
    # Nothing the reader tried changed anything.
    assert srv.http.get(f"/v1/files/{ids['file']}", headers=reader).status_code == 200
    assert srv.http.get(f"{T}/{ids['job']}", headers=reader).json()["status"] in ("validating_files", "queued")
    assert srv.http.get(f"{AL}/{ids['alias']}", headers=reader).json()["version"] == 1


def test_a_key_learns_its_own_project_and_role(two_projects):
    """``GET /v1/tunery/me``: each key its own project, role and whether it may write (what api/auth.py enforces);
    the admin key its organization's default project; no key is the usual 401."""
    srv, keys, _ = two_projects
    seen = {}
    for name in ("A-member", "A-reader", "B-member", "B-reader"):
        r = srv.http.get("/v1/tunery/me", headers={"authorization": f"Bearer {keys[name]}"})
        assert r.status_code == 200, r.text
        me = r.json()
        role = name.split("-")[1]
        assert (me["object"], me["role"], me["writes"], me["admin"]) == ("tunery.caller", role, role != "reader", False)
        assert me["key_id"] and me["open_access"] is False
        seen[name] = me["project_id"]
    assert seen["A-member"] == seen["A-reader"] != seen["B-member"] == seen["B-reader"]
    admin = srv.http.get("/v1/tunery/me", headers={"authorization": f"Bearer {BOOTSTRAP}"}).json()
    assert (admin["role"], admin["admin"], admin["writes"], admin["key_id"]) == ("admin", True, True, None)
    assert admin["project_id"] == srv.settings.project_id
    assert srv.http.get("/v1/tunery/me", headers={"authorization": ""}).status_code == 401
