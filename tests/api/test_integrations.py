"""Integrations at the API (docs/integrations.md): a job's ``integrations`` checked at creation (types, shapes, limits,
the W&B key a W&B job needs, MLflow URIs a trainer may reach) and echoed as OpenAI echoes them; the project secrets
behind them (``/v1/tunery/secrets``): owner and admin only, values never answered; and how a run's trainer gets them
(its backend's environment, a Kubernetes Secret), never through the JobSpec."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from openai import OpenAI

from api.grpc.convert import to_message
from scheduler.backends import LocalProcessBackend
from scheduler.k8s_manifests import job_manifest, run_token_secret_manifest
from tests.conftest import TINY, chat_lines
from tests.schema import validate
from tunery.integrations import integrations_spec, secrets_needed
from tunery.settings import Settings
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import fine_tuning_pb2_grpc

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
S = "/v1/tunery/secrets"
KEY = "wandb-key-0123456789-not-a-real-one"
WANDB = {"type": "wandb", "wandb": {"project": "my-project", "tags": ["a", "b"]}}


def _keys(srv: Any) -> dict[str, str]:
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    project = srv.http.post("/v1/organization/projects", json={"name": "P"}, headers=admin).json()["id"]
    keys = {}
    for role in ("owner", "member", "reader"):
        made = srv.http.post(
            f"/v1/organization/projects/{project}/service_accounts",
            json={"name": role, "role": role},
            headers=admin,
        )
        keys[role] = made.json()["api_key"]["value"]
    return keys


def test_secrets_and_integrations_end_to_end_at_the_api(tiny_server_factory: Any) -> None:
    # max_concurrent_runs=0: jobs stay queued (no trainer reaches for W&B's servers from here).
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0, integrations_allow_private=True)
    keys = _keys(srv)
    owner, member, reader = (
        OpenAI(base_url=f"{srv.base_url}/v1", api_key=keys[r], max_retries=0) for r in ("owner", "member", "reader")
    )
    f = member.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune")

    def create(client: OpenAI, integrations: list[dict[str, Any]]) -> Any:
        return srv.http.post(
            "/v1/fine_tuning/jobs",
            json={"model": TINY, "training_file": f.id, "integrations": integrations},
            headers={"authorization": f"Bearer {client.api_key}"},
        )

    # No W&B key for the project yet: a W&B job is refused at creation, naming the field.
    refused = create(member, [WANDB])
    assert refused.status_code == 400, refused.text
    validate(refused.json(), "ErrorResponse")
    assert refused.json()["error"]["param"] == "integrations"
    assert refused.json()["error"]["code"] == "missing_integration_secret"
    assert "WANDB_API_KEY" in refused.json()["error"]["message"]

    # Members and readers may not read or set the project's secrets; the owner may, and never sees a value again.
    for client in (member, reader):
        h = {"authorization": f"Bearer {client.api_key}"}
        for method, path, body in (("GET", S, None), ("POST", f"{S}/WANDB_API_KEY", {"value": KEY})):
            r = srv.http.request(method, path, json=body, headers=h)
            assert r.status_code == 403, (method, path, r.text)
            assert "api.tunery.secrets" in r.json()["error"]["message"]
    h_owner = {"authorization": f"Bearer {owner.api_key}"}
    made = srv.http.post(f"{S}/WANDB_API_KEY", json={"value": KEY}, headers=h_owner)
    assert made.status_code == 200, made.text
    assert made.json()["object"] == "tunery.secret" and made.json()["name"] == "WANDB_API_KEY"
    again = srv.http.post(f"{S}/WANDB_API_KEY", json={"value": KEY + "2"}, headers=h_owner).json()
    assert again["created_at"] == made.json()["created_at"] and again["updated_at"] >= made.json()["updated_at"]
    listed = srv.http.get(S, headers=h_owner)
    assert [s["name"] for s in listed.json()["data"]] == ["WANDB_API_KEY"]
    for answer in (made, listed):
        assert KEY not in answer.text
    unknown = srv.http.post(f"{S}/AWS_SECRET_ACCESS_KEY", json={"value": "x"}, headers=h_owner)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "name"
    extra = srv.http.post(f"{S}/MLFLOW_TRACKING_TOKEN", json={"value": "x", "hint": 1}, headers=h_owner)
    assert extra.status_code == 400
    # The admin may too (its own default project); another project's owner sees none of these.
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    assert srv.http.get(S, headers=admin).json()["data"] == []

    # Now the W&B job is created, and its object echoes the integration as OpenAI does (the run id: the job's id).
    mlflow = {"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:5000", "experiment_name": "e"}}
    job = member.fine_tuning.jobs.create(
        model=TINY,
        training_file=f.id,
        integrations=[WANDB, mlflow],  # type: ignore[list-item]
    )
    deadline = time.monotonic() + 60  # queued: its hyperparameters resolved, and so it stays (nothing runs here)
    while member.fine_tuning.jobs.retrieve(job.id).status != "queued":
        assert time.monotonic() < deadline, member.fine_tuning.jobs.retrieve(job.id)
        time.sleep(0.1)
    body = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}", headers={"authorization": f"Bearer {member.api_key}"}).json()
    assert body["integrations"] == [
        {
            "type": "wandb",
            "wandb": {"project": "my-project", "name": None, "entity": None, "tags": ["a", "b"], "run_id": job.id},
        },
        {
            "type": "mlflow",
            "mlflow": {"tracking_uri": "http://127.0.0.1:5000", "experiment_name": "e", "run_name": None},
        },
    ]
    assert job.integrations is not None and job.integrations[0].wandb.project == "my-project"  # the SDK reads it
    assert KEY not in str(body)
    # Over gRPC: the same job, its integrations typed (JobIntegration); a CreateJob's integrations are checked alike.
    with grpc.insecure_channel(srv.grpc_address) as channel:
        stub = fine_tuning_pb2_grpc.FineTuningServiceStub(channel)
        md = (("authorization", f"Bearer {member.api_key}"),)
        got = stub.GetJob(jpb.GetJobRequest(job_id=job.id), metadata=md, timeout=30)
        assert got == to_message(body, jpb.FineTuningJob)
        assert [i.type for i in got.integrations] == ["wandb", "mlflow"]
        assert got.integrations[0].wandb.run_id == job.id and got.integrations[1].mlflow.experiment_name == "e"
        request = jpb.CreateJobRequest(model=TINY, training_file=f.id)
        request.integrations.add().update({"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:1"}})
        made_grpc = stub.CreateJob(request, metadata=md, timeout=30)
        assert made_grpc.integrations[0].mlflow.tracking_uri == "http://127.0.0.1:1"
        request.integrations[0].update({"type": "comet"})
        with pytest.raises(grpc.RpcError) as refused_grpc:
            stub.CreateJob(request, metadata=md, timeout=30)
        assert refused_grpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Deleting the secret: the next W&B job is refused again (the queued one keeps its integration).
    deleted = srv.http.delete(f"{S}/WANDB_API_KEY", headers=h_owner)
    assert deleted.json() == {"object": "tunery.secret.deleted", "name": "WANDB_API_KEY", "deleted": True}
    assert srv.http.delete(f"{S}/WANDB_API_KEY", headers=h_owner).status_code == 404
    logged = srv.http.get("/v1/organization/audit_logs?limit=100", headers=admin)
    kinds = [e["type"] for e in logged.json()["data"] if e["type"].startswith("tunery.secret.")]
    assert kinds == ["tunery.secret.deleted", "tunery.secret.set", "tunery.secret.set"]  # newest first
    assert KEY not in logged.text
    assert create(member, [WANDB]).status_code == 400


@pytest.mark.parametrize(
    ("integrations", "param", "code"),
    [
        ([{"type": "comet", "comet": {}}], "integrations[0].type", "unsupported_integration"),
        ([{"type": "wandb"}], "integrations[0].wandb", "invalid_integration"),
        ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project", None),
        ([{"type": "wandb", "wandb": {"project": "a/b"}}], "integrations[0].wandb.project", "invalid_integration"),
        ([{"type": "wandb", "wandb": {"project": "p", "entity": "x#"}}], "integrations[0].wandb.entity", None),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["t"] * 51}}], "integrations[0].wandb.tags", None),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["t" * 65]}}], "integrations[0].wandb.tags[0]", None),
        (
            [{"type": "wandb", "wandb": {"project": "p"}, "mlflow": {"tracking_uri": "http://a"}}],
            "integrations[0].mlflow",
            None,
        ),
        ([WANDB, WANDB], "integrations[1]", "invalid_integration"),
        ([WANDB] * 6, "integrations", None),
        (
            [{"type": "mlflow", "mlflow": {"tracking_uri": "file:///tmp/x"}}],
            "integrations[0].mlflow.tracking_uri",
            None,
        ),
        (
            [{"type": "mlflow", "mlflow": {"tracking_uri": "http://u:p@example.com"}}],
            "integrations[0].mlflow.tracking_uri",
            None,
        ),
        (
            [{"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}],
            "integrations[0].mlflow.tracking_uri",
            None,
        ),
        (
            [{"type": "mlflow", "mlflow": {"tracking_uri": "http://169.254.169.254/"}}],
            "integrations[0].mlflow.tracking_uri",
            None,
        ),
        (
            [{"type": "mlflow", "mlflow": {"tracking_uri": "https://8.8.8.8", "token": "x"}}],
            "integrations[0].mlflow.token",
            None,
        ),
    ],
)
def test_bad_integrations_are_refused_at_creation_and_by_the_dry_run(
    api_http: Any, api_file: str, integrations: list[dict[str, Any]], param: str, code: str | None
) -> None:
    for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/dry_run"):
        r = api_http.post(path, json={"model": "m", "training_file": api_file, "integrations": integrations})
        assert r.status_code == 400, r.text
        validate(r.json(), "ErrorResponse")
        err = r.json()["error"]
        assert err["param"] == param, err
        if code is not None:
            assert err["code"] == code


@pytest.fixture(scope="module")
def api_http(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The API alone (no scheduler), W&B offline (no key needed), MLflow URIs on public addresses only."""
    from fastapi.testclient import TestClient

    from api.server import build

    data = tmp_path_factory.mktemp("integrations")
    settings = Settings(
        data_dir=data, demo_model=False, base_models={"m": "/nonexistent"}, allow_open=True, wandb_mode="offline"
    )
    app, shutdown = build(settings, role="api")
    yield TestClient(app)
    shutdown()


@pytest.fixture(scope="module")
def api_file(api_http: Any) -> str:
    r = api_http.post("/v1/files", files={"file": ("t.jsonl", chat_lines(12))}, data={"purpose": "fine-tune"})
    return str(r.json()["id"])


def test_offline_wandb_needs_no_key_and_public_mlflow_uris_pass(api_http: Any, api_file: str) -> None:
    body = {
        "model": "m",
        "training_file": api_file,
        "integrations": [WANDB, {"type": "mlflow", "mlflow": {"tracking_uri": "https://8.8.8.8/mlflow"}}],
    }
    r = api_http.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    validate({**r.json(), "integrations": r.json()["integrations"][:1]}, "FineTuningJob")  # OpenAI's W&B entry
    assert [i["type"] for i in r.json()["integrations"]] == ["wandb", "mlflow"]


# ---- how a run's trainer gets them ----------------------------------------------------------------------------------
def test_the_local_backend_hands_a_run_its_secrets_and_never_the_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local backend's trainer gets the run's secrets in its environment, and never the server's own W&B key."""
    monkeypatch.setenv("WANDB_API_KEY", "the-servers-own-key")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "the-servers-own-token")
    dump = tmp_path / "env.txt"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nenv > {dump}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    backend = LocalProcessBackend(str(fake))
    handle = backend.launch("ftjob-x", "file:///spec.json", tmp_path / "log", None, "tok", {"WANDB_API_KEY": KEY})
    deadline = time.monotonic() + 30
    while backend.status(handle).running and time.monotonic() < deadline:
        time.sleep(0.05)
    env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert env["WANDB_API_KEY"] == KEY and "MLFLOW_TRACKING_TOKEN" not in env
    assert os.environ["WANDB_API_KEY"] == "the-servers-own-key"  # the server's environment is untouched


def test_a_kubernetes_run_reads_its_secrets_from_its_own_secret_and_the_spec_holds_none() -> None:
    settings = Settings(k8s_trainer_image="trainer:1")
    manifest = job_manifest(settings, job_id="ftjob-x", run="abc", spec_ref="s3://b#k", secret_env=["WANDB_API_KEY"])
    secret = run_token_secret_manifest(manifest, "tok", {"WANDB_API_KEY": KEY})
    env = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "WANDB_API_KEY"}
    assert secret["stringData"]["WANDB_API_KEY"] == KEY
    assert KEY not in str(manifest)
    # What the trainer's JobSpec gets of a job's integrations: their settings, never a secret.
    stored = [{"type": "wandb", "wandb": {"project": "p", "name": None, "entity": None, "tags": [], "run_id": "j"}}]
    assert secrets_needed(stored) == {"WANDB_API_KEY"}
    spec = integrations_spec(stored, wandb_mode="online", wandb_base_url="", allow_private=False)
    assert spec is not None and spec.wandb is not None and spec.wandb.run_id == "j"
    assert "api_key" not in spec.model_dump_json().lower()
