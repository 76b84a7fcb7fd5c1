"""The `tunery` command as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
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
    return {**env, "TUNERY_DATA_DIR": str(tmp_path / "data"), "TUNERY_DEMO_MODEL": "false", **settings}


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
