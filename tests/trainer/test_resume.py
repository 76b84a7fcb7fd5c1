"""Full-state checkpoints, pause/resume, preemption and crash-resume (docs/resilience.md).

The trainer tests run the real entrypoint (``python -m trainer``) on the tiny model, with an in-test gRPC
TrainerReporting service; the server tests drive a real embedded server through the OpenAI SDK.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from tests.conftest import TINY, chat_lines
from tests.e2e.test_tiny import _trainer_pids
from tests.trainer.test_run import SPEC_KEY, setup_job, start_trainer, wait
from tests.trainer_fixtures import RecordingServicer, chat_examples, jsonl_bytes, pausing_server, reporting_server
from trainer.errors import EXIT_OK, EXIT_PREEMPTED
from tunery.resume import (
    STATE_MARKER,
    StateMismatch,
    complete_states,
    download_state,
    latest_state,
    prune_states,
    state_prefix,
    upload_state,
)
from tunery.storage import open_store
from tunery.v1 import reporting_pb2_grpc

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast

__all__ = ["pausing_server", "reporting_server"]

OUT = "jobs/ftjob-test"


# ---- the completion marker --------------------------------------------------------------------------------
def _state_folder(tmp: Path, step: int) -> Path:
    folder = tmp / f"local-{step}"
    folder.mkdir()
    (folder / "optimizer.pt").write_bytes(os.urandom(2048))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_only_complete_states_are_used(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "objects"))
    assert latest_state(store, OUT) is None
    upload_state(store, state_prefix(OUT, 2), _state_folder(tmp_path, 2), {"step": 2})
    # Half-written: the trainer died before the marker (the files are there, the marker is not).
    for name in ("optimizer.pt", "trainer_state.json"):
        store.put_bytes(f"{state_prefix(OUT, 4)}/{name}", b"partial")
    # Marker present but a file it lists is gone, and one whose file was cut short.
    upload_state(store, state_prefix(OUT, 6), _state_folder(tmp_path, 6), {"step": 6})
    store.delete(f"{state_prefix(OUT, 6)}/optimizer.pt")
    upload_state(store, state_prefix(OUT, 8), _state_folder(tmp_path, 8), {"step": 8})
    store.put_bytes(f"{state_prefix(OUT, 8)}/optimizer.pt", b"short")
    # A marker that is not ours.
    store.put_bytes(f"{state_prefix(OUT, 10)}/{STATE_MARKER}", b"{not json")

    state = latest_state(store, OUT)
    assert state is not None and state.step == 2
    assert [s.step for s in complete_states(store, OUT)] == [2]
    download_state(store, state, tmp_path / "down")
    assert (tmp_path / "down" / "optimizer.pt").read_bytes() == (tmp_path / "local-2" / "optimizer.pt").read_bytes()

    # Same size, different bytes: only the SHA-256 check on download catches it.
    upload_state(store, state_prefix(OUT, 12), _state_folder(tmp_path, 12), {"step": 12})
    store.put_bytes(f"{state_prefix(OUT, 12)}/optimizer.pt", os.urandom(2048))
    damaged = latest_state(store, OUT)
    assert damaged is not None and damaged.step == 12
    with pytest.raises(StateMismatch, match="SHA-256"):
        download_state(store, damaged, tmp_path / "down12")

    # Pruning keeps the newest complete states (and leaves newer, possibly unfinished ones alone).
    store.put_bytes(f"{state_prefix(OUT, 14)}/optimizer.pt", b"being written")
    assert prune_states(store, OUT, keep=2) == 4  # the incomplete 4, 6, 8 and 10
    assert [s.step for s in complete_states(store, OUT)] == [12, 2]
    assert store.list(f"{state_prefix(OUT, 14)}/")
    prune_states(store, OUT, keep=0)
    assert store.list(f"{OUT}/resume/") == []


# ---- the trainer: pause, resume, preemption ----------------------------------------------------------------
def _losses(servicer: RecordingServicer) -> dict[int, float]:
    return {m.metrics.step: m.metrics.train_loss for m in servicer.of("Metrics")}


def test_paused_run_resumes_where_it_stopped(tmp_path: Path, tiny_model_dir: Path, pausing_server: Any) -> None:
    servicer, address = pausing_server
    data = jsonl_bytes(chat_examples(12))
    kw: dict[str, Any] = {"n_epochs": 2, "batch_size": 2}  # 6 steps per epoch, 12 steps, checkpoints at 6 and 12

    # The reference: the same job, uninterrupted.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    setup_job(ref_dir, tiny_model_dir, address, data, **kw)
    out = wait(start_trainer(ref_dir / "objects"))
    assert "step 12/12" in out, out[-3000:]
    reference = _losses(servicer)
    assert sorted(reference) == list(range(1, 13))
    servicer.calls.clear()

    # Paused mid-epoch: a resume state at the step it stopped at, a reported checkpoint, exit code 4.
    servicer.pause_after_step = 3
    store, spec = setup_job(tmp_path, tiny_model_dir, address, data, **kw)
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == EXIT_PREEMPTED, out[-5000:]
    first = _losses(servicer)
    paused_at = max(first)
    assert 3 <= paused_at < 12 and sorted(first) == list(range(1, paused_at + 1))
    state = latest_state(store, spec.output_prefix)
    assert state is not None and state.step == paused_at
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= set(state.marker["files"])
    assert [c.step for c in servicer.of("Checkpoint")][-1] == paused_at
    assert not any(f.succeeded for f in servicer.of("Finished"))

    # Resumed: continues at the next step and ends at 12, with the metrics of all 12 steps in results.csv.
    servicer.calls.clear()
    servicer.pause_after_step = None
    servicer.paused = False
    store.put_bytes(SPEC_KEY, spec.model_copy(update={"resume_from": "latest"}).model_dump_json().encode())
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == EXIT_OK, out[-5000:]
    second = _losses(servicer)
    assert sorted(second) == list(range(paused_at + 1, 13))
    events = [e.message for e in servicer.of("Event")]
    assert any(f"Resuming from the checkpoint at step {paused_at}/12" in m for m in events), events
    (finished,) = servicer.of("Finished")
    assert finished.succeeded
    rows = store.get_bytes(finished.results_key).decode().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 13))
    assert store.list(f"{spec.output_prefix}/resume/") == []  # of no more use once the final model is written
    # Optimizer, LR schedule, RNG and data order were restored: the loss curve is the uninterrupted one.
    for step in range(paused_at + 1, 13):
        assert second[step] == pytest.approx(reference[step], rel=1e-3, abs=1e-4), (step, second, reference)


def test_sigterm_preempts_with_a_checkpoint(tmp_path: Path, tiny_model_dir: Path, pausing_server: Any) -> None:
    servicer, address = pausing_server
    store, spec = setup_job(tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(12)), n_epochs=3, batch_size=1)
    proc = start_trainer(tmp_path / "objects")
    deadline = time.monotonic() + 120
    while not servicer.of("Metrics") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servicer.of("Metrics"), "no step was reported"
    proc.send_signal(signal.SIGTERM)
    out = wait(proc, timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, out[-5000:]
    last = max(m.metrics.step for m in servicer.of("Metrics"))
    state = latest_state(store, spec.output_prefix)
    assert state is not None and state.step == last
    assert [c.step for c in servicer.of("Checkpoint")][-1] == last
    assert not store.list(f"{spec.output_prefix}/model/")


@dataclass
class GoneServicer(RecordingServicer):
    """The control plane of a run whose server was killed: it answers until the Metrics report of ``gone_at``, then
    every call fails as a dead server's would; ``attempted`` notes the steps the run still tried to report."""

    gone_at: int = 0
    gone: bool = False
    attempted: list[int] = field(default_factory=list)

    def _answer(self, name: str, request: Any, context: Any) -> Any:
        if name == "Metrics":
            self.attempted.append(request.metrics.step)
        if self.gone:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is gone")
        reply = self._record(name, request)
        self.gone = name == "Metrics" and request.metrics.step >= self.gone_at
        return reply

    def Started(self, request: Any, context: Any) -> Any:
        return self._answer("Started", request, context)

    def Metrics(self, request: Any, context: Any) -> Any:
        return self._answer("Metrics", request, context)

    def Event(self, request: Any, context: Any) -> Any:
        return self._answer("Event", request, context)

    def Checkpoint(self, request: Any, context: Any) -> Any:
        return self._answer("Checkpoint", request, context)


@contextlib.contextmanager
def serving(servicer: RecordingServicer) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    reporting_pb2_grpc.add_TrainerReportingServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_a_resumed_run_reports_what_the_run_before_it_could_not(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    """A run whose control plane went away (its server killed) trains on until it is stopped and saves its state
    with metrics and a checkpoint nobody received; the run resuming from that state reports them, so the job has
    every step's metrics and every checkpoint once."""
    gone = GoneServicer(gone_at=2)
    with serving(gone) as address:
        store, spec = setup_job(
            tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(12)), n_epochs=1, batch_size=1
        )
        proc = start_trainer(tmp_path / "objects")
        deadline = time.monotonic() + 180
        while not any(step > gone.gone_at for step in gone.attempted) and proc.poll() is None:
            assert time.monotonic() < deadline, "no step after the control plane went away"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # what trainer/orphan.py sends a run whose server died
        out = wait(proc, timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, out[-5000:]
    delivered = [m.metrics.step for m in gone.of("Metrics")]
    assert delivered == [1, 2] and gone.of("Checkpoint") == []
    state = latest_state(store, spec.output_prefix)
    assert state is not None and state.step > 2
    assert state.marker["metrics_reported_step"] == 2
    assert [(c["step"], c["reported"]) for c in state.marker["checkpoints"]] == [(state.step, False)]

    servicer, address = reporting_server
    resumed = spec.model_copy(update={"resume_from": "latest", "reporting_address": address})
    store.put_bytes(SPEC_KEY, resumed.model_dump_json().encode())
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == EXIT_OK, out[-5000:]
    # The steps the first run trained but could not report come first, then the ones this run trains.
    assert [m.metrics.step for m in servicer.of("Metrics")] == list(range(3, 13))
    assert [c.step for c in servicer.of("Checkpoint")] == [state.step, 12]
    assert servicer.of("Checkpoint")[0].object_prefix == f"{spec.output_prefix}/checkpoints/step-{state.step}"


def test_a_stop_during_a_checkpoint_stops_at_that_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, pausing_server: Any
) -> None:
    """A pause (or a preemption) that arrives while a planned checkpoint is written and reported stops the run at
    that step, with the state it saves there, instead of training one more step and saving again."""
    servicer, address = pausing_server
    servicer.pause_on_checkpoint = True
    store, spec = setup_job(tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(12)), n_epochs=1, batch_size=1)
    spec = spec.model_copy(update={"plan": spec.plan.model_copy(update={"n_checkpoints": 4})})  # 3, 6, 9, 12
    store.put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == EXIT_PREEMPTED, out[-5000:]
    assert [m.metrics.step for m in servicer.of("Metrics")] == [1, 2, 3]
    assert [c.step for c in servicer.of("Checkpoint")] == [3]
    assert [s.step for s in complete_states(store, spec.output_prefix)] == [3]
    events = [e.message for e in servicer.of("Event")]
    assert "Saved the training state at step 3/12; stopping (paused)" in events, events


# ---- through the server ---------------------------------------------------------------------------------
def _metric_steps(srv: Any, job_id: str) -> list[int]:
    events = reversed(srv.client.fine_tuning.jobs.list_events(job_id, limit=1000).data)
    return [e.data["step"] for e in events if e.type == "metrics"]


def _wait_event(srv: Any, job_id: str, pred: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(pred(m) for m in srv.events(job_id)):
        assert time.monotonic() < deadline, srv.events(job_id)
        time.sleep(0.2)


def _create(srv: Any, n: int, epochs: int) -> Any:
    f = srv.client.files.create(file=("train.jsonl", chat_lines(n)), purpose="fine-tune")
    return srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, seed=7, hyperparameters={"n_epochs": epochs, "batch_size": 1}
    )


def test_pause_and_resume_through_the_sdk(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory()
    job = _create(srv, 24, 1)  # 24 steps, one checkpoint at the end
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.fine_tuning.jobs.resume(job.id)
    assert e.value.code == "job_not_resumable"
    _wait_event(srv, job.id, lambda m: m.startswith("Step 2/"))
    paused = srv.client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.fine_tuning.jobs.pause(job.id)
    assert e.value.code == "job_not_pausable" and e.value.body["param"] == "fine_tuning_job_id"
    _wait_event(srv, job.id, lambda m: m.startswith("Fine-tuning job paused at step"))
    while _trainer_pids(job.id):
        time.sleep(0.2)
    paused_at = max(_metric_steps(srv, job.id))
    assert srv.client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert any(m == f"Fine-tuning job paused at step {paused_at}" for m in srv.events(job.id))
    assert paused_at < 24

    resumed = srv.client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    final = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert final.status == "succeeded", (final.error, srv.events(job.id))
    steps = _metric_steps(srv, job.id)
    assert steps == list(range(1, 25)), steps  # no step twice, none missing: the second run continued
    assert any(f"Resuming from the checkpoint at step {paused_at}/24" in m for m in srv.events(job.id))
    with pytest.raises(openai.BadRequestError) as e:
        srv.client.fine_tuning.jobs.pause(job.id)
    assert e.value.code == "job_not_pausable"


# Locally, and on the production stores: S3 (SeaweedFS) and PostgreSQL.
@pytest.mark.parametrize(("object_store", "metadata_store"), [("local", "sqlite"), ("s3", "postgresql")])
def test_killed_trainer_restarts_from_its_checkpoint(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory()
    store = srv.app.state.ctx.store
    job = _create(srv, 12, 2)  # 24 steps, checkpoints at 12 and 24
    _wait_event(srv, job.id, lambda m: m == "Checkpoint created at step 12")
    deadline = time.monotonic() + 60
    while latest_state(store, f"jobs/{job.id}") is None:  # its resume state is uploaded right after
        assert time.monotonic() < deadline, srv.events(job.id)
        time.sleep(0.1)
    # A half-written state after it (files without the completion marker) must be skipped.
    store.put_bytes(f"{state_prefix(f'jobs/{job.id}', 20)}/optimizer.pt", b"half-written")
    pids = _trainer_pids(job.id)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    final = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert final.status == "succeeded", (final.error, srv.events(job.id))
    events = srv.events(job.id)
    restart = [m for m in events if m.startswith("The trainer stopped unexpectedly")]
    assert len(restart) == 1, events
    step = int(restart[0].split("restarting from checkpoint step ")[1].split()[0])
    assert step == 12 and restart[0].endswith("(attempt 2 of 4)"), restart
    assert any("Resuming from the checkpoint at step 12/24" in m for m in events), events
    steps = _metric_steps(srv, job.id)
    # The first run reported up to where it was killed; the second continued after the checkpoint.
    assert steps[-12:] == list(range(13, 25)), steps
    assert set(steps) == set(range(1, 25))
    assert final.trained_tokens and final.fine_tuned_model


def test_crashes_beyond_the_retry_limit_fail_the_job(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(max_run_retries=0)
    job = _create(srv, 24, 50)
    _wait_event(srv, job.id, lambda m: m.startswith("Step 1/"))
    for pid in _trainer_pids(job.id):
        os.kill(pid, signal.SIGKILL)
    final = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert final.status == "failed"
    assert final.error.code == "training_error"
    assert "stopped unexpectedly" in final.error.message and "TUNERY_MAX_RUN_RETRIES" in final.error.message


def test_preempted_trainer_resumes_without_counting_a_retry(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(max_run_retries=0)  # a crash would fail the job; a preemption must not
    job = _create(srv, 24, 1)
    _wait_event(srv, job.id, lambda m: m.startswith("Step 2/"))
    for pid in _trainer_pids(job.id):
        os.kill(pid, signal.SIGTERM)  # what a node drain or a spot reclaim sends
    final = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    events = srv.events(job.id)
    assert final.status == "succeeded", (final.error, events)
    [preempted] = [m for m in events if m.startswith("The trainer was preempted")]
    step = int(preempted.split("resuming from checkpoint step ")[1])
    assert 2 <= step < 24
    assert any(f"Resuming from the checkpoint at step {step}/24" in m for m in events), events
    assert _metric_steps(srv, job.id) == list(range(1, 25))
