"""One tiny training job end to end with the object store on S3 (a real SeaweedFS): the trainer process opens the
store from its URL with the TUNERY_S3_* environment, reads its spec and data from S3 and writes checkpoints,
the final adapter and the results there; serving pulls the adapter from S3. Nothing lands in the local folder."""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY, chat_lines
from tunery.storage import STORE_CREDENTIAL_ENV

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast


@pytest.fixture
def object_store() -> str:
    return "s3"


def trainer_python_recording_env(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter for the trainer that first writes the environment it was started with to a file."""
    dump, wrapper = tmp_path / "trainer-env.json", tmp_path / "trainer-python"
    record = f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))"
    wrapper.write_text(
        f'#!/bin/sh\n{shlex.quote(sys.executable)} -c {shlex.quote(record)}\nexec {shlex.quote(sys.executable)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, dump


@pytest.mark.parametrize("access", ["direct", "brokered"])
def test_tiny_job_through_s3(tiny_server_factory, tmp_path, object_store, access, monkeypatch, seaweedfs):
    """Direct: the trainer gets the store's credentials. Brokered: it gets none (not even the server's own from its
    environment) and reaches its spec, data, checkpoints and results through presigned URLs from the scheduler."""
    over = {}
    if access == "brokered":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TUNERY_S3_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, seaweedfs.secret_access_key)  # what a local trainer would otherwise inherit
        python, env_dump = trainer_python_recording_env(tmp_path)
        over = {"trainer_object_access": "brokered", "trainer_python": str(python)}
    srv = tiny_server_factory(data_dir=tmp_path / "state", **over)
    store = srv.app.state.ctx.store
    assert store.url.startswith("s3://")
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=f.id,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    job = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.status == "succeeded", (job.error, srv.events(job.id))

    if access == "brokered":
        env = json.loads(env_dump.read_text())
        assert not set(env) & set(STORE_CREDENTIAL_ENV)
        assert not any(seaweedfs.secret_access_key in v or seaweedfs.access_key_id in v for v in env.values())
        spec = json.loads(store.get_bytes(f"jobs/{job.id}/spec.json"))
        assert spec["object_store"].startswith("tunery-broker://") and spec["object_store"].endswith(f"/{job.id}")

    keys = store.list(f"jobs/{job.id}/")
    assert f"jobs/{job.id}/spec.json" in keys and f"jobs/{job.id}/results.csv" in keys
    assert any(k.endswith("/adapter_model.safetensors") and "/checkpoints/" in k for k in keys), keys
    assert any(k.endswith("/adapter_model.safetensors") and "/model/" in k for k in keys), keys
    assert f"files/{f.id}" in store.list("files/")
    assert not (tmp_path / "state" / "objects").exists()  # the local folder was never used
    assert store.incomplete("") == []

    # The results file, downloaded from S3 with a presigned URL (no API key).
    url = srv.http.get(f"/v1/files/{job.result_files[0]}/url").json()["url"]
    rows = list(csv.reader(io.StringIO(httpx.get(url).text)))
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3]

    # Serving downloads the adapter from S3 into its cache and answers with it.
    r = srv.client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Question number 3?"}], max_tokens=4
    )
    assert r.model == job.fine_tuned_model and r.usage.completion_tokens <= 4
    assert list((tmp_path / "cache" / "adapters").glob("*/adapter_model.safetensors"))
