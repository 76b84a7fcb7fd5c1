"""``python -m trainer`` end to end on the tiny model: reports, checkpoints, results, cancel, SIGTERM, failures.

Each run is the real entrypoint in a subprocess, with a local object store in tmp_path and an in-test gRPC
TrainerReporting service that records every call.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.trainer_fixtures import RUN_TOKEN, chat_examples, free_port, jsonl_bytes, make_spec, reporting_server
from trainer.errors import EXIT_CANCELLED, EXIT_FAILED, EXIT_PREEMPTED
from trainer.metrics import RESULTS_HEADER
from trainer.reporter import Reporter, RetryPolicy
from trainer.run import load_spec
from tunery.jobspec import RUN_TOKEN_ENV
from tunery.storage import open_store
from tunery.v1 import reporting_pb2, reporting_pb2_grpc

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast

__all__ = ["reporting_server"]  # a fixture (tiny_model_dir comes from conftest.py)

REPO = Path(__file__).resolve().parents[2]
SPEC_KEY = "jobs/ftjob-test/spec.json"


def trainer_env() -> dict[str, str]:
    # One intra-op thread: the tiny model gains nothing from two, and it keeps timings steady on shared CPUs.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", RUN_TOKEN_ENV: RUN_TOKEN}


def start_trainer(store_root: Path) -> subprocess.Popen[str]:
    ref = f"{store_root.resolve().as_uri()}#{SPEC_KEY}"
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", "--spec", ref],
        cwd=REPO,
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def setup_job(tmp_path: Path, tiny_model_dir: Path, address: str, train: bytes, **kw: Any) -> tuple[Any, Any]:
    root = tmp_path / "objects"
    store = open_store(str(root))
    store.put_bytes("files/file-train", train)
    if "validation_key" in kw:
        store.put_bytes(kw["validation_key"], jsonl_bytes(chat_examples(4, system=False)))
    spec = make_spec(base_model_path=tiny_model_dir, object_store=root, reporting_address=address, **kw)
    store.put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    return store, spec


def wait(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"trainer did not finish in {timeout}s:\n{out[-5000:]}")
    return out


def test_successful_run_reports_and_writes_everything(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    servicer, address = reporting_server
    examples = chat_examples(11)
    # One long answer: truncated to max_seq_length (a warn event), still trained on.
    examples.append(
        {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "one " * 120}]}
    )
    train_bytes = jsonl_bytes(examples)
    store, spec = setup_job(
        tmp_path,
        tiny_model_dir,
        address,
        train_bytes,
        validation_key="files/file-valid",
        n_epochs=2,
        batch_size=4,
        max_seq_length=96,
    )
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == 0, out[-5000:]

    names = servicer.names()
    assert names[0] in ("Started", "Event") and names[-1] == "Finished"
    (started,) = servicer.of("Started")
    assert started.run.job_id == spec.job_id and started.run.run_token == RUN_TOKEN
    assert started.train_examples == 12
    steps_per_epoch = math.ceil(12 / 4)
    total = steps_per_epoch * 2
    assert started.total_steps == total
    assert json.loads(started.hyperparameters_json)["n_epochs"] == 2

    # Metrics: every optimizer step, in order, with finite losses, after Started.
    metrics = [m.metrics for m in servicer.of("Metrics")]
    assert [m.step for m in metrics] == list(range(1, total + 1))
    assert names.index("Started") < names.index("Metrics")
    for m in metrics:
        assert m.total_steps == total
        assert math.isfinite(m.train_loss) and m.train_loss > 0
        assert m.HasField("train_mean_token_accuracy") and m.HasField("learning_rate")
        assert m.tokens_per_second > 0
    # The run's peak memory so far (the trainer process's peak RSS on the CPU): a model's worth, never falling.
    peaks = [m.peak_memory_gib for m in metrics]
    assert all(m.HasField("peak_memory_gib") for m in metrics) and peaks == sorted(peaks)
    assert 0.2 < peaks[-1] < 16, peaks
    epoch_ends = [m for m in metrics if m.step % steps_per_epoch == 0]
    assert all(m.HasField("valid_loss") and math.isfinite(m.valid_loss) for m in epoch_ends)
    assert all(m.HasField("full_valid_loss") for m in epoch_ends)
    assert not any(m.HasField("valid_loss") for m in metrics if m.step % steps_per_epoch)
    assert metrics[-1].epoch == pytest.approx(2.0)

    # The truncation was reported, never silent.
    warns = [e for e in servicer.of("Event") if e.level == "warn"]
    assert any("truncated" in e.message for e in warns)
    assert json.loads(next(e for e in warns if "truncated" in e.message).data_json)["truncated"] == 1

    # Checkpoints: one per epoch, complete in the store before they were reported.
    train_sha = hashlib.sha256(train_bytes).hexdigest()
    checkpoints = servicer.of("Checkpoint")
    assert [c.step for c in checkpoints] == [steps_per_epoch, 2 * steps_per_epoch]
    for c in checkpoints:
        assert c.object_prefix == f"jobs/{spec.job_id}/checkpoints/step-{c.step}"
        assert c.metrics.step == c.step and c.metrics.HasField("valid_loss")
        keys = set(store.list(c.object_prefix + "/"))
        for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tunery_manifest.json"):
            assert f"{c.object_prefix}/{name}" in keys
        manifest = json.loads(store.get_bytes(f"{c.object_prefix}/tunery_manifest.json"))
        assert manifest["step"] == c.step and manifest["job_id"] == spec.job_id
        assert manifest["data_files"]["training_file"]["sha256"] == train_sha
        assert (
            manifest["data_files"]["validation_file"]["sha256"]
            == hashlib.sha256(store.get_bytes("files/file-valid")).hexdigest()
        )
        assert manifest["seed"] == spec.seed
        assert manifest["hyperparameters"]["learning_rate"] == spec.plan.learning_rate
        assert manifest["lora"]["r"] == 8
        assert {"torch", "transformers", "trl", "peft", "python"} <= set(manifest["versions"])
        assert manifest["metrics"]["step"] == c.step
        assert (
            manifest["files"]["adapter_model.safetensors"]
            == hashlib.sha256(store.get_bytes(f"{c.object_prefix}/adapter_model.safetensors")).hexdigest()
        )
    # Each checkpoint is reported right after its step's metrics (which carry the epoch's validation loss).
    sequence = [
        (n, r.metrics.step if n == "Metrics" else r.step)
        for n, r, _ in servicer.calls
        if n in ("Metrics", "Checkpoint")
    ]
    for c in checkpoints:
        assert sequence[sequence.index(("Checkpoint", c.step)) - 1] == ("Metrics", c.step)

    # Finished: succeeded, with the final model and the results.
    (finished,) = servicer.of("Finished")
    assert finished.succeeded and not finished.error_code
    assert finished.model_prefix == f"jobs/{spec.job_id}/model"
    assert finished.results_key == f"jobs/{spec.job_id}/results.csv"
    assert finished.trained_tokens == started.train_tokens_per_epoch * 2
    rows = list(csv.reader(io.StringIO(store.get_bytes(finished.results_key).decode())))
    assert ",".join(rows[0]) == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert rows[0] == RESULTS_HEADER
    assert len(rows) == 1 + total
    assert [int(r[0]) for r in rows[1:]] == list(range(1, total + 1))
    assert rows[steps_per_epoch][3] != "" and rows[1][3] == ""
    final_manifest = json.loads(store.get_bytes(f"{finished.model_prefix}/tunery_manifest.json"))
    assert final_manifest["step"] == total and final_manifest["base_model"] == "tiny-llama"

    # The adapter loads with PEFT onto the base model, and it was trained.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    local = tmp_path / "final"
    store.get_dir(finished.model_prefix, local)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model = PeftModel.from_pretrained(base, str(local))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_cancel_requested_stops_promptly(tmp_path: Path, tiny_model_dir: Path, reporting_server: Any) -> None:
    servicer, address = reporting_server
    servicer.cancel_after_step = 2
    store, spec = setup_job(tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(12)), n_epochs=3, batch_size=1)
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    exited = time.monotonic()
    assert proc.returncode == EXIT_CANCELLED, out[-5000:]
    assert servicer.cancel_sent_at is not None
    assert exited - servicer.cancel_sent_at < 15, "the trainer did not stop promptly after the cancel reply"
    (started,) = servicer.of("Started")
    steps = [m.metrics.step for m in servicer.of("Metrics")]
    assert 2 <= max(steps) < started.total_steps
    assert not any(f.succeeded for f in servicer.of("Finished"))
    assert not store.list(f"jobs/{spec.job_id}/model/")


def test_sigterm_stops_at_step_boundary(tmp_path: Path, tiny_model_dir: Path, reporting_server: Any) -> None:
    servicer, address = reporting_server
    store, spec = setup_job(tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(12)), n_epochs=3, batch_size=1)
    proc = start_trainer(tmp_path / "objects")
    deadline = time.monotonic() + 120
    while not servicer.of("Metrics") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servicer.of("Metrics"), "no step was reported"
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out = wait(proc, timeout=30)
    # Preempted: it saves its state at the step boundary first (tests/trainer/test_resume.py checks the state).
    assert proc.returncode == EXIT_PREEMPTED, out[-5000:]
    assert time.monotonic() - sent < 10
    assert not any(f.succeeded for f in servicer.of("Finished"))
    assert not store.list(f"jobs/{spec.job_id}/model/")


def test_bad_training_file_fails_with_error_code(tmp_path: Path, tiny_model_dir: Path, reporting_server: Any) -> None:
    servicer, address = reporting_server
    # Line 1: chat without messages (a line of no format); line 2: another format.
    bad = b'{"messages": []}\n{"prompt": "legacy format"}\n'
    setup_job(tmp_path, tiny_model_dir, address, bad)
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == EXIT_FAILED, out[-5000:]
    assert "Traceback" in out  # the full traceback goes to the log...
    (finished,) = servicer.of("Finished")
    assert not finished.succeeded
    assert finished.error_code == "invalid_training_file"
    assert finished.error_param == "training_file"
    assert "\n" not in finished.error_message and "Traceback" not in finished.error_message  # ...not to the user
    assert "line 1" in finished.error_message
    assert not servicer.of("Started")


# ---- smaller pieces, in process ------------------------------------------------------------------------
def test_load_spec_from_path_and_store(tmp_path: Path, tiny_model_dir: Path) -> None:
    store, spec = setup_job(tmp_path, tiny_model_dir, "127.0.0.1:1", jsonl_bytes(chat_examples(10)))
    local = tmp_path / "spec.json"
    local.write_text(spec.model_dump_json())
    assert load_spec(str(local)) == spec
    assert load_spec(local.as_uri()) == spec
    assert load_spec(f"{store.url}#{SPEC_KEY}") == spec


def test_reporter_survives_an_unreachable_control_plane() -> None:
    quick = RetryPolicy(attempts=2, timeout_s=0.3, backoff_s=0.05)
    reporter = Reporter(
        f"127.0.0.1:{free_port()}",
        "ftjob-x",
        "tok",
        policies={"best_effort": quick, "important": quick, "final": quick, "degraded": quick},
    )
    t0 = time.monotonic()
    for step in range(1, 4):
        reporter.metrics(reporting_pb2.StepMetrics(step=step, total_steps=3, epoch=1.0))  # never blocks
    assert time.monotonic() - t0 < 0.5
    assert reporter.finished(True, model_prefix="m") is False  # retried, then given up: no exception
    assert reporter.stop_reason is None
    reporter.close(timeout=5)


class _Rejecting(reporting_pb2_grpc.TrainerReportingServicer):
    def Metrics(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "run token does not match")


def test_reporter_stops_when_the_run_token_is_rejected() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    reporting_pb2_grpc.add_TrainerReportingServicer_to_server(_Rejecting(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stops: list[str] = []
    try:
        reporter = Reporter(f"127.0.0.1:{port}", "ftjob-x", "stale", on_stop=stops.append)
        reporter.metrics(reporting_pb2.StepMetrics(step=1, total_steps=3, epoch=0.3))
        reporter.close(timeout=10)
        assert reporter.stop_reason == "cancelled" and stops == ["cancelled"]
    finally:
        server.stop(grace=None)
