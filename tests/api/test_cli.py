"""The `tunery` command as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY, free_port


def test_serve_starts_answers_and_stops(tmp_path, tiny_model_dir):
    port = free_port()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_DEMO_MODEL": "false",
        "TUNERY_BASE_MODELS": f'{{"{TINY}": "{tiny_model_dir}"}}',
        "TUNERY_API_KEYS": "k1,k2",
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() - t0 < 30
            time.sleep(0.1)
        startup = time.monotonic() - t0
        print(f"tunery serve ready in {startup:.2f}s")
        ok = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k2", max_retries=0)
        assert [m.id for m in ok.models.list().data] == [TINY]
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        assert (tmp_path / "data" / "tunery.db").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


def test_db_upgrade_and_schema_check(tmp_path):
    from tunery.db import Database, SchemaOutOfDate

    url = f"sqlite:///{tmp_path / 'x.db'}"
    db = Database(url)
    try:
        db.check_schema()
        raise AssertionError("an empty database must be refused")
    except SchemaOutOfDate as e:
        assert "tunery db upgrade" in str(e)
    env = {**os.environ, "TUNERY_DATABASE_URL": url, "TUNERY_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "api.cli", "db", "upgrade"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "schema at revision" in out.stdout
    db.check_schema()
    assert db.current_revision() == db.head_revision()


def _env(tmp_path, **settings: str) -> dict[str, str]:
    """The environment of a `tunery serve` with exactly these settings (none inherited from the test's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
    base = {"TUNERY_DATA_DIR": str(tmp_path / "data"), "TUNERY_DEMO_MODEL": "false", "TUNERY_API_GRPC_PORT": "0"}
    return {**env, **base, **settings}


def test_api_role_refuses_to_start_without_api_keys(tmp_path):
    """A deployed API (`--role api`) with no TUNERY_API_KEYS would let anyone in: it says so and exits 2."""
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--role", "api", "--port", str(free_port())],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refusing to start the API role without API keys" in out.stderr
    assert "TUNERY_API_KEYS" in out.stderr and "TUNERY_ALLOW_OPEN=true" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()  # refused before it touched any state


def test_brokered_trainers_need_an_s3_store(tmp_path):
    """Brokered trainers get presigned URLs: a scheduler on a local folder with them refuses to start, and says why."""
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--role", "scheduler", "--port", str(free_port())],
        env=_env(tmp_path, TUNERY_TRAINER_OBJECT_ACCESS="brokered"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "TUNERY_TRAINER_OBJECT_ACCESS=brokered needs an s3:// object store" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "data").exists()


def test_api_role_starts_on_a_store_that_has_issued_keys(tmp_path):
    """Keys issued from the store (`tunery admin`) close the API as TUNERY_API_KEYS would: `--role api` starts
    without TUNERY_API_KEYS, and every request needs one of those keys."""
    from typer.testing import CliRunner

    from api.cli import app

    env = _env(tmp_path)
    made = CliRunner().invoke(app, ["admin", "create-key", "--role", "admin"], env=env)
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--role", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("role", "settings", "health"),
    [
        ("api", {"TUNERY_ALLOW_OPEN": "true"}, "/health"),  # open on purpose: any request is the one tenant
        ("scheduler", {}, "/healthz"),  # answers no API request: keys mean nothing there
    ],
)
def test_roles_that_start_without_api_keys(tmp_path, role, settings, health):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--role", role, "--port", str(port)],
        env=_env(tmp_path, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        if role == "api":
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200  # no key needed
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


def test_admin_bootstrap_create_list_and_revoke_keys(tmp_path, tiny_server_factory):
    """`tunery admin`: bootstrap a project and its owner key, make a reader key, list them redacted, revoke one; the
    running server (same data dir) takes each change at once, and needs a key from the first one on."""
    from typer.testing import CliRunner

    from api.cli import app
    from tunery.tenancy import key_digest

    runner = CliRunner()
    env = _env(tmp_path)

    def admin(*args: str) -> str:
        out = runner.invoke(app, ["admin", *args], env=env)
        assert out.exit_code == 0, out.output
        return out.stdout.strip()

    srv = tiny_server_factory(data_dir=tmp_path / "data")  # no TUNERY_API_KEYS: open until a key is issued
    assert srv.client.files.list().data == []
    owner = admin("bootstrap", "--project", "Team A")
    assert owner.startswith("sk-svcacct-") and "\n" not in owner  # stdout is the key alone: KEY=$(tunery admin ...)
    time.sleep(1.1)  # the server notices keys issued by another process within a second
    with pytest.raises(openai.AuthenticationError):
        srv.client.files.list()
    team = OpenAI(base_url=f"{srv.base_url}/v1", api_key=owner, admin_api_key=owner, max_retries=0)
    f = team.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    project = team.files.retrieve(f.id)  # on its own project
    assert project.id == f.id

    listed = admin("list-keys").splitlines()
    assert len(listed) == 1 and owner not in listed[0] and listed[0].split("\t")[2] == "owner"
    assert key_digest(owner) not in listed[0]  # never the value, never its hash
    project_id = listed[0].split("\t")[1]
    assert project_id.startswith("proj_")
    reader = admin("create-key", "--project", project_id, "--role", "reader", "--expires-days", "30")
    as_reader = OpenAI(base_url=f"{srv.base_url}/v1", api_key=reader, max_retries=0)
    assert [x.id for x in as_reader.files.list().data] == [f.id]
    with pytest.raises(openai.PermissionDeniedError):
        as_reader.files.delete(f.id)
    assert len(admin("list-keys", "--project", project_id).splitlines()) == 2

    admin("revoke-key", listed[0].split("\t")[0])
    with pytest.raises(openai.AuthenticationError):
        team.files.list()
    assert runner.invoke(app, ["admin", "create-key", "--role", "member"], env=env).exit_code == 2
    assert runner.invoke(app, ["admin", "create-key", "--project", "proj_none", "--role", "member"], env=env).exit_code
    made = admin("create-key", "--role", "admin")
    assert made.startswith("sk-admin-")


def test_aliases_create_set_rollback_history_and_delete(tmp_path, tiny_server_factory):
    """`tunery aliases` calls the API's alias service on the metadata store (as `tunery admin` does): a running
    server on the same store serves each change at once, and the versions say the CLI made them."""
    from typer.testing import CliRunner

    from api.cli import app
    from tunery.db import FineTunedModel
    from tunery.db.ops import now

    runner = CliRunner()
    env = _env(tmp_path)
    srv = tiny_server_factory(data_dir=tmp_path / "data")  # open: every request is the default project's
    ctx = srv.app.state.ctx
    one, two = f"ft:{TINY}:personal:one:AbCd1234", f"ft:{TINY}:personal:two:EfGh5678"
    with ctx.db.session() as s:
        for model in (one, two):
            s.add(
                FineTunedModel(
                    id=model,
                    kind="fine_tuned",
                    base_model=TINY,
                    job_id="ftjob-cli",
                    object_prefix="jobs/ftjob-cli/model/",
                    owned_by="personal",
                    organization_id=ctx.settings.organization_id,
                    project_id=ctx.settings.project_id,
                    created_at=now(),
                )
            )

    def aliases(*args: str, code: int = 0) -> str:
        out = runner.invoke(app, ["aliases", *args], env=env)
        assert out.exit_code == code, out.output
        return out.output

    def served() -> str:
        return str(srv.http.get("/v1/tunery/aliases/support-bot").json()["model"])

    assert aliases("create", "support-bot", one, "--note", "first").startswith(f"support-bot\t{one}\tv1\t")
    assert served() == one
    assert aliases("set", "support-bot", two).startswith(f"support-bot\t{two}\tv2\t")
    assert served() == two
    assert aliases("rollback", "support-bot").startswith(f"support-bot\t{one}\tv3\t")
    assert served() == one
    assert aliases("rollback", "support-bot", "--to-version", "2").startswith(f"support-bot\t{two}\tv4\t")
    history = [line.split("\t") for line in aliases("history", "support-bot").splitlines()]
    assert [(h[0], h[1], h[3], h[4], h[5], h[6]) for h in history] == [
        ("v4", "rolled_back", "cli", one, two, ""),
        ("v3", "rolled_back", "cli", two, one, ""),
        ("v2", "updated", "cli", one, two, ""),
        ("v1", "created", "cli", "-", one, "first"),
    ]
    rest = srv.http.get("/v1/tunery/aliases/support-bot/history").json()["data"]
    assert {(v["actor"]["type"], v["actor"]["id"]) for v in rest} == {("cli", "cli")}
    assert [line.split("\t")[0] for line in aliases("list").splitlines()] == ["support-bot"]
    # Refusals are the API's, with exit code 1.
    assert "Invalid alias name `Bad`" in aliases("create", "Bad", one, code=1)
    assert "No alias `nope`" in aliases("rollback", "nope", code=1)
    assert "does not exist" in aliases("set", "support-bot", "ft:tiny-llama:personal:x:nope1234", code=1)
    aliases("delete", "support-bot")
    assert srv.http.get("/v1/tunery/aliases/support-bot").status_code == 404
    assert aliases("list") == ""
