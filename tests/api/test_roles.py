"""`tunery serve --role`: the API and the scheduler as separate processes sharing the metadata and object stores."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from api.server import build
from tests.conftest import TINY, chat_lines
from tunery.settings import Settings

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast


def test_api_and_scheduler_roles_split_the_work(tmp_path, tiny_model_dir):
    settings = Settings(
        data_dir=tmp_path / "data",
        base_models={TINY: str(tiny_model_dir)},
        demo_model=False,
        model_cache_dir=tmp_path / "cache",
        trainer_device="cpu",
        scheduler_poll_seconds=0.2,
        api_keys=["k"],  # the api role refuses to start without keys (the SDK below sends "k")
    )
    api_app, api_shutdown = build(settings, role="api")
    sched_app, sched_shutdown = None, None
    try:
        http = TestClient(api_app)
        sdk = OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)
        f = sdk.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
        job = sdk.fine_tuning.jobs.create(
            model=TINY, training_file=f.id, hyperparameters={"n_epochs": 1, "batch_size": 4}
        )
        time.sleep(1.0)  # several poll intervals: nothing in the api role validates or launches
        assert sdk.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
        assert sdk.files.retrieve(f.id).status == "uploaded"

        sched_app, sched_shutdown = build(settings, role="scheduler")
        health = TestClient(sched_app).get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "leader": True}
        assert TestClient(sched_app).get("/v1/models").status_code == 404  # no API in the scheduler role
        deadline = time.monotonic() + 180
        while (status := sdk.fine_tuning.jobs.retrieve(job.id).status) not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status == "succeeded", [e.message for e in sdk.fine_tuning.jobs.list_events(job.id).data]
    finally:
        if sched_shutdown:
            sched_shutdown()
        api_shutdown()


def test_unknown_role_is_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--role", "worker", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--role" in out.stderr
