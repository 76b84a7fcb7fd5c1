"""The trainer's experiment trackers (trainer/integrations.py, docs/integrations.md) against real parts: one tiny
training run (``python -m trainer``) logs to W&B in offline mode (its run file is read back record by record) and to
a real MLflow tracking server started from PyPI (its run, params and metrics read through ``MlflowClient``); and a
tracker that fails becomes one warning, never a failed run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_run import setup_job, start_trainer, wait
from tests.trainer_fixtures import chat_examples, free_port, jsonl_bytes, reporting_server
from trainer.integrations import MlflowTracker, Trackers
from trainer.metrics import StepRow
from tunery.integrations import IntegrationsSpec, MlflowSpec, WandbSpec

pytestmark = pytest.mark.integration  # trains through the trainer: make test, not test-fast

__all__ = ["reporting_server"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (PyPI's ``mlflow server``) on loopback, with a SQLite store."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    store = ["--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", str(root / "artifacts")]
    # No job runner (MLflow's async jobs: two more processes this test does not use).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *store],
        stdout=(root / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run file (``run-<id>.wandb``): its header (``:W&B``, magic, version), then LevelDB's log
    format (32 KiB blocks of chunks: CRC, length, type), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # a block's zero-filled tail
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            out.append(pb.Record.FromString(pending))
            pending = b""
    return out


def _items(items: Any) -> dict[str, Any]:
    """A record's items (history, summary) as a dict: a key may come as ``nested_key`` parts."""
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_one_run_logs_to_wandb_offline_and_to_a_real_mlflow_server(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    servicer, address = reporting_server
    job_id = "ftjob-integrations"
    store, spec = setup_job(
        tmp_path,
        tiny_model_dir,
        address,
        jsonl_bytes(chat_examples(8)),
        validation_key="files/file-valid",
        n_epochs=1,
        batch_size=4,
        max_seq_length=64,
        job_id=job_id,
    )
    spec.integrations = IntegrationsSpec(
        wandb=WandbSpec(project="tunery-tests", name="tiny run", tags=["first"], run_id=job_id, mode="offline"),
        mlflow=MlflowSpec(tracking_uri=mlflow_server, experiment_name="tunery-tests", allow_private=True),
    )
    store.put_bytes("jobs/ftjob-test/spec.json", spec.model_dump_json().encode())
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # offline: no key needed
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == 0, out[-5000:]
    assert not [e.message for e in servicer.of("Event") if "integration" in e.message], "no tracker failed"
    reported = {m.metrics.step: m.metrics for m in servicer.of("Metrics")}
    assert sorted(reported) == [1, 2] and reported[2].HasField("valid_loss")

    # W&B, offline: the run file under WANDB_DIR holds the run, its config, every step's figures and the end.
    (run_file,) = wandb_dir.glob(f"wandb/offline-run-*-{job_id}/run-{job_id}.wandb")
    records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.display_name) == (job_id, "tunery-tests", "tiny run")
    assert set(run.tags) == {"first", "tunery/finetune", "tunery/tiny-llama", f"tunery/{job_id}"}
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["job_id"] == job_id and config["total_steps"] == 2
    assert config["hyperparameters"]["learning_rate"] == spec.plan.learning_rate
    assert config["hyperparameters"]["n_epochs"] == 1 and config["hyperparameters"]["batch_size"] == 4
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    by_step = {h["_step"]: h for h in history}
    assert sorted(by_step) == [1, 2]
    for step, h in by_step.items():
        assert h["train_loss"] == pytest.approx(reported[step].train_loss, rel=1e-6)
        assert h["learning_rate"] == pytest.approx(reported[step].learning_rate, rel=1e-6)
    assert by_step[2]["valid_loss"] == pytest.approx(reported[2].valid_loss, rel=1e-6)
    summary = [_items(r.summary.update) for r in records if r.WhichOneof("record_type") == "summary"]
    assert {"fine_tuned_model": spec.fine_tuned_model} in summary
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0

    # MLflow: the run in its experiment, named after the job, finished, with the plan as params and the metrics.
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tunery-tests")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`tunery.job_id` = '{job_id}'")
    assert found.info.run_name == job_id and found.info.status == "FINISHED"
    assert found.data.params["hyperparameters.learning_rate"] == str(spec.plan.learning_rate)
    assert found.data.params["hyperparameters.n_epochs"] == "1" and found.data.params["method"] == "supervised"
    assert found.data.tags["tunery.fine_tuned_model"] == spec.fine_tuned_model
    losses = client.get_metric_history(found.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in losses] == [(s, pytest.approx(reported[s].train_loss, rel=1e-6)) for s in (1, 2)]
    (valid,) = client.get_metric_history(found.info.run_id, "valid_loss")
    assert valid.step == 2 and math.isclose(valid.value, reported[2].valid_loss, rel_tol=1e-6)
    assert [m.step for m in client.get_metric_history(found.info.run_id, "learning_rate")] == [1, 2]


def test_a_failing_tracker_is_one_warning_and_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MLflow server that is not there: the start fails, the job gets one warning naming the integration, and the
    later calls skip that tracker (no more errors, nothing raised into the training loop)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    from tests.trainer_fixtures import make_spec

    spec = make_spec(base_model_path=Path("/nonexistent"), object_store=Path("/tmp"), reporting_address="x:1")
    down = MlflowSpec(tracking_uri=f"http://127.0.0.1:{free_port()}", allow_private=True)
    warnings: list[tuple[str, dict[str, Any] | None]] = []
    trackers = Trackers([MlflowTracker(down, spec)], lambda m, d: warnings.append((m, d)))
    trackers.start({"job_id": spec.job_id})
    for step in (1, 2):
        trackers.log(StepRow(step=step, epoch=0.5 * step, train_loss=1.0 / step))
    trackers.close("succeeded", timeout=30)
    assert len(warnings) == 1, warnings
    message, data = warnings[0]
    assert message.startswith("MLflow integration failed, training goes on without it:") and data == {
        "integration": "MLflow"
    }
    assert trackers.failed == ["MLflow"] and trackers.trackers == []


def test_a_tracking_uri_that_became_private_is_refused_by_the_trainer() -> None:
    """The trainer checks the URI again (a name may come to resolve elsewhere than at the job's creation)."""
    from tests.trainer_fixtures import make_spec

    spec = make_spec(base_model_path=Path("/nonexistent"), object_store=Path("/tmp"), reporting_address="x:1")
    warnings: list[str] = []
    loopback = MlflowSpec(tracking_uri="http://127.0.0.1:9", allow_private=False)
    trackers = Trackers([MlflowTracker(loopback, spec)], lambda m, d: warnings.append(m))
    trackers.start({})
    trackers.close("succeeded", timeout=30)
    assert len(warnings) == 1 and "loopback" in warnings[0] and "TUNERY_INTEGRATIONS_ALLOW_PRIVATE" in warnings[0]
