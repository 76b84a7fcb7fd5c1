"""Faults: `tunery serve` killed with SIGKILL at its worst moments and started again on the same data.

Each test runs the server as a real process (tests/e2e/server_process.py), kills it while an upload, a validation,
a training run or a checkpoint write is in flight, starts it again with the same environment, and checks what a
client and the stores see: every acknowledged file whole (bytes and SHA-256), no half file listed, the upload in
flight gone or resumable, jobs that reach ``succeeded`` with each event once, one metrics event per step, every
planned checkpoint listed once and servable, a sane ``trained_tokens``, and no leftover that is never cleaned.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from scheduler.expiry import sweep_leftovers
from tests.configurations import configuration, configuration_metadata_store, configuration_object_store
from tests.conftest import TINY, chat_lines, free_port
from tests.e2e.server_process import TuneryProcess, no_trainers_left, sha256, trainer_log, trainer_pids, wait_for
from tunery.hyperparams import spaced_steps
from tunery.resume import latest_state

__all__ = ["configuration", "configuration_metadata_store", "configuration_object_store"]

pytestmark = pytest.mark.slow

# Steps of a training job (one example a step, one epoch): enough that a trainer whose server was killed early (it
# notices within a second) is stopped well before the end, even where a step of the tiny model takes 30 ms.
STEPS = 48

EMBEDDED_ONLY = pytest.mark.parametrize("configuration", ["embedded"], indirect=True)
BOTH = pytest.mark.parametrize("configuration", ["embedded", "production"], indirect=True)


@pytest.fixture
def tunery(
    tmp_path: Path,
    tiny_model_dir: Path,
    store_settings: dict[str, Any],
    database_settings: dict[str, Any],
    configuration: str,
) -> Iterator[TuneryProcess]:
    """A `tunery serve` process on a fresh data dir (and a fresh S3 prefix and PostgreSQL database in production)."""
    settings: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "host": "127.0.0.1",
        "port": free_port(),
        "base_models": {TINY: str(tiny_model_dir)},
        "demo_model": False,
        "model_cache_dir": str(tmp_path / "cache"),
        "scheduler_poll_seconds": 0.2,
        "trainer_device": "cpu",
        "cancel_grace_seconds": 3.0,
        "upload_completing_stale_seconds": 3,  # a complete cut short by the kill can be retried 3 s on
        **store_settings,
        **database_settings,
    }
    if configuration == "production":
        # Each process is a new replica (host-pid): the restarted one takes the dead one's runs over once its
        # lease lapses, the way another replica would.
        settings["scheduler_lease_seconds"] = 6
    srv = TuneryProcess(settings, tmp_path / "tunery.log")
    srv.start()
    with no_trainers_left(lambda: srv.jobs):
        try:
            yield srv
        finally:
            srv.close()


# ---- what must hold after every restart ----------------------------------------------------------------------
def upload_file(srv: TuneryProcess, data: bytes, name: str = "train.jsonl") -> Any:
    f = srv.client.files.create(file=(name, data), purpose="fine-tune")
    srv.acknowledged[f.id] = (len(data), sha256(data))
    return f


def assert_files_whole(srv: TuneryProcess) -> None:
    """Every acknowledged file is listed with its bytes and SHA-256; every listed file is whole: its content is
    what its row says (no half file is ever listed)."""
    listed = {f.id: f for f in srv.client.files.list(limit=10000).data}
    missing = set(srv.acknowledged) - set(listed)
    assert not missing, f"acknowledged files lost: {missing}"
    rows = dict(srv.file_rows())
    for file_id, f in listed.items():
        content = srv.client.files.content(file_id).read()
        if f.purpose == "fine-tune-results":  # served base64-encoded, as OpenAI serves it
            content = base64.b64decode(content)
        assert len(content) == f.bytes, (file_id, len(content), f.bytes)
        if rows.get(file_id):
            assert sha256(content) == rows[file_id], file_id
        if file_id in srv.acknowledged:
            assert (len(content), sha256(content)) == srv.acknowledged[file_id], file_id


def assert_no_leftovers(srv: TuneryProcess) -> None:
    """What a kill left half-written is never listed, and the leftover sweep removes it (here without waiting for
    its age: nothing else is being written)."""
    sweep_leftovers(srv.db, srv.store, older_than=0)
    assert srv.store.incomplete("") == []


def assert_job_whole(
    srv: TuneryProcess,
    job_id: str,
    *,
    steps: int,
    planned: list[int],
    tokens_per_epoch: int | None = None,
    chat: bool = True,
) -> Any:
    """The job succeeded once, with each event once, one metrics event per step, every planned checkpoint listed
    once (plus those a preemption wrote), each whole in the store and servable (with ``chat``, each answers a chat
    completion), and a sane ``trained_tokens``."""
    job = srv.client.fine_tuning.jobs.retrieve(job_id)
    events = srv.events(job_id)
    messages = [e.message for e in events]
    assert job.status == "succeeded", (job.error, messages)
    counts = Counter(messages)
    once = [
        f"Created fine-tuning job: {job_id}",
        f"Validating training file: {job.training_file}",
        "Files validated, moving job to queued state",
        f"New fine-tuned model created: {job.fine_tuned_model}",
        "The job has successfully completed",
    ]
    for message in once:
        assert counts[message] == 1, (message, messages)
    assert messages[-1] == "The job has successfully completed", messages
    # One run per start: the first, and one after each requeue.
    requeued = sum(1 for m in messages if "the job was queued again" in m or m.startswith("The trainer "))
    assert counts["Fine-tuning job started"] == 1 + requeued, messages
    metric_steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert sorted(metric_steps) == list(range(1, steps + 1)), metric_steps

    # Checkpoints: newest first, each step once, every planned one, each with its event once.
    ckpts = srv.client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data
    listed = [c.step_number for c in reversed(ckpts)]
    assert listed == sorted(set(listed)), listed
    assert set(planned) <= set(listed), (planned, listed)
    assert len({c.id for c in ckpts}) == len(ckpts)
    created = sorted(int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("Checkpoint created at step "))
    assert created == listed, (created, listed)
    # In the store: exactly the listed checkpoints, each whole (every file as its manifest says).
    root = f"jobs/{job_id}/checkpoints/"
    stored = sorted({int(k[len(root) :].split("/")[0].removeprefix("step-")) for k in srv.store.list(root)})
    assert stored == listed, f"checkpoints in the store {stored}, listed {listed}"
    for c in ckpts:
        assert_whole_checkpoint(srv, f"{root}step-{c.step_number}")
    assert srv.store.list(f"jobs/{job_id}/resume/") == []  # resume states are dropped once the model is written
    # Each checkpoint and the final model is a model, and answers.
    for model in [job.fine_tuned_model, *(c.fine_tuned_model_checkpoint for c in ckpts)]:
        assert srv.client.models.retrieve(model).id == model
        if not chat:
            continue
        r = srv.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Question number 3?"}], max_tokens=2
        )
        assert r.model == model and r.usage.completion_tokens <= 2
    # trained_tokens: the training set's tokens (as validated for the job) times the epochs, once.
    if tokens_per_epoch is None:
        report = srv.http.get(f"/v1/files/{job.training_file}/validation", params={"model": TINY}).json()
        tokens_per_epoch = report["tokens"]["total"]
    assert job.trained_tokens == tokens_per_epoch * job.hyperparameters.n_epochs, (job.trained_tokens, tokens_per_epoch)
    return job


def assert_whole_checkpoint(srv: TuneryProcess, prefix: str) -> None:
    """A checkpoint in the store is every file its manifest lists, each with the SHA-256 it lists, and no other."""
    manifest = json.loads(srv.store.get_bytes(f"{prefix}/tunery_manifest.json"))
    keys = set(srv.store.list(f"{prefix}/"))
    assert keys == {f"{prefix}/{rel}" for rel in manifest["files"]} | {f"{prefix}/tunery_manifest.json"}, prefix
    for rel, digest in manifest["files"].items():
        assert sha256(srv.store.get_bytes(f"{prefix}/{rel}")) == digest, f"{prefix}/{rel}"


def create_job(srv: TuneryProcess, file_id: str, epochs: int, **tunery: Any) -> Any:
    job = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        seed=7,
        hyperparameters={"n_epochs": epochs, "batch_size": 1},
        **({"extra_body": {"tunery": tunery}} if tunery else {}),
    )
    srv.jobs.append(job.id)
    return job


# ---- 1. during an upload ---------------------------------------------------------------------------------------
def in_background(fn: Any) -> dict[str, Any]:
    """Run ``fn`` on a thread; the dict gets its ``result`` or ``error`` and the thread under ``thread``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as e:
            out["error"] = e

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def kill_when_writing(srv: TuneryProcess, prefix: str, request: dict[str, Any]) -> list[str]:
    """Kill the server as soon as an object under ``prefix`` is being written (a temporary file of the local
    folder, an unfinished multipart upload on S3); returns the unfinished writes the kill left."""
    wait_for(lambda: srv.store.incomplete(prefix), 60, f"a write under {prefix}", every=0.002)
    srv.kill()
    request["thread"].join(30)
    assert "error" in request, f"the request in flight was answered: {request.get('result')}"
    left = srv.store.incomplete(prefix)
    assert left, "the kill did not land during the write"
    return left


@BOTH
def test_kill_during_uploads(tunery: TuneryProcess) -> None:
    """Killed while a large POST /v1/files, a /v1/uploads part and an upload's completion write to the object
    store: what was acknowledged stays whole, the half-written object is never listed and is swept, the file can
    be sent again, the upload whose part was in flight takes the part again and completes, and the one whose
    completion was cut short completes when the client tries again."""
    srv = tunery
    before = upload_file(srv, chat_lines(12))  # acknowledged before the kills

    # A large file in flight: killed while its bytes go into the object store.
    big = os.urandom(40 * 1024 * 1024)
    request = in_background(lambda: srv.client.files.create(file=("big.bin", big), purpose="user_data"))
    kill_when_writing(srv, "files/", request)
    srv.start()
    assert set(dict(srv.file_rows())) == {before.id}  # no row for the file in flight
    assert_files_whole(srv)
    assert_no_leftovers(srv)
    again = srv.client.files.create(file=("big.bin", big), purpose="user_data")  # the client sends it again
    srv.acknowledged[again.id] = (len(big), sha256(big))

    # An upload in parts: the first acknowledged, the second killed while it is stored.
    first, second = os.urandom(6 * 1024 * 1024), os.urandom(20 * 1024 * 1024)
    up = srv.client.uploads.create(
        bytes=len(first) + len(second), filename="parts.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    p1 = srv.client.uploads.parts.create(up.id, data=first)
    request = in_background(lambda: srv.client.uploads.parts.create(up.id, data=second))
    kill_when_writing(srv, f"uploads/{up.id}/", request)
    srv.start()
    assert srv.upload_status(up.id) == "pending"  # resumable: it takes the part again
    p2 = srv.client.uploads.parts.create(up.id, data=second)
    done = srv.client.uploads.complete(
        up.id, part_ids=[p1.id, p2.id], md5=hashlib.md5(first + second, usedforsecurity=False).hexdigest()
    )
    assert done.status == "completed" and done.file is not None and done.file.bytes == len(first) + len(second)
    srv.acknowledged[done.file.id] = (len(first) + len(second), sha256(first + second))

    # Completing an upload: killed while its parts are assembled into the file. The retried complete goes
    # through once the dead request's hold is stale (before that, a 400 that says when to try again).
    chunks = [os.urandom(6 * 1024 * 1024) for _ in range(4)]
    up = srv.client.uploads.create(
        bytes=sum(map(len, chunks)), filename="whole.bin", mime_type="application/octet-stream", purpose="user_data"
    )
    ids = [srv.client.uploads.parts.create(up.id, data=c).id for c in chunks]
    request = in_background(lambda: srv.client.uploads.complete(up.id, part_ids=ids))
    kill_when_writing(srv, "files/", request)
    srv.start()

    def retried() -> Any:
        try:
            return srv.client.uploads.complete(up.id, part_ids=ids)
        except openai.BadRequestError as e:
            assert e.code == "upload_not_pending" and "try again in 3 s" in e.message, e.message
            return None

    done = wait_for(retried, 60, "the retried complete to go through", every=0.5)
    assert done.status == "completed" and done.file is not None
    srv.acknowledged[done.file.id] = (sum(map(len, chunks)), sha256(b"".join(chunks)))
    assert_files_whole(srv)
    assert_no_leftovers(srv)
    assert srv.store.list("uploads/") == []


# ---- 2. during validation --------------------------------------------------------------------------------------
@EMBEDDED_ONLY
def test_kill_during_validation(tunery: TuneryProcess) -> None:
    """Killed while the scheduler validates a training file (at upload), then while it validates a job's files:
    after each restart the validation runs again to its end, once; the job is queued once and succeeds."""
    srv = tunery
    repeats = 500  # 12 distinct examples, 6,000 lines: long enough to validate that the kill lands in it
    f = upload_file(srv, chat_lines(12) * repeats)
    wait_for(lambda: srv.claimed("file", f.id) == ("uploaded", True), 30, "the file's validation", every=0.002)
    srv.kill()
    assert srv.claimed("file", f.id) == ("uploaded", True), "the kill did not land during the file's validation"
    srv.start()
    wait_for(lambda: srv.client.files.retrieve(f.id).status != "uploaded", 60, "the file's validation", every=0.2)
    assert srv.client.files.retrieve(f.id).status == "processed"
    report = srv.http.get(f"/v1/files/{f.id}/validation").json()
    assert report["examples"] == 12 * repeats and report["status"] == "processed"

    # The job's validation: duplicates are dropped by the trainer, so it trains on the 12 distinct examples.
    job = create_job(srv, f.id, epochs=1, data={"drop_duplicates": True})
    wait_for(lambda: srv.claimed("job", job.id) == ("validating_files", True), 30, "the job's validation", every=0.002)
    srv.kill()
    assert srv.claimed("job", job.id) == ("validating_files", True), "the kill did not land during the validation"
    srv.start()
    srv.wait_job(job.id, {"succeeded", "failed", "cancelled"})
    one = srv.http.get(f"/v1/files/{f.id}/validation", params={"model": TINY}).json()["tokens"]["total"] // repeats
    # (Its checkpoint was written after the kills: whole in the store is enough, the other cases chat with theirs.)
    assert_job_whole(srv, job.id, steps=12, planned=[12], tokens_per_epoch=one, chat=False)
    assert_files_whole(srv)
    assert_no_leftovers(srv)


# ---- 3. during training ----------------------------------------------------------------------------------------
@BOTH
def test_kill_during_training(tunery: TuneryProcess, configuration: str) -> None:
    """The server dies mid-run: its trainer notices, stops itself as if preempted (a resume state at the step it
    stopped at) and exits; the restarted server queues the job again and its next run continues from there."""
    srv = tunery
    steps = 5 * STEPS  # the orphan notices within a second, when a quiet machine has trained 20 steps of the tiny model
    f = upload_file(srv, chat_lines(steps))
    job = create_job(srv, f.id, epochs=1)  # a checkpoint at the end
    srv.wait_event(job.id, lambda m: m.startswith(f"Step 2/{steps}"))
    [pid] = trainer_pids(job.id)
    srv.kill()

    # The orphan stops itself: a resume state at the step it reached, then it exits.
    wait_for(lambda: not trainer_pids(job.id), 60, "the orphaned trainer to stop itself")
    log = trainer_log(Path(srv.settings["data_dir"]), job.id)
    assert "is gone: stopping this run as if preempted" in log, log[-3000:]
    state = latest_state(srv.store, f"jobs/{job.id}")
    assert state is not None and 2 <= state.step < steps, log[-3000:]

    srv.start()
    final = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"})
    messages = srv.messages(job.id)
    requeue = (
        "The control plane restarted: the job was queued again"
        if configuration == "embedded"
        else "The scheduler running the job stopped: the job was queued again"
    )
    assert messages.count(requeue) == 1, messages
    assert f"Resuming from the checkpoint at step {state.step}/{steps}" in messages, messages
    job = assert_job_whole(srv, final.id, steps=steps, planned=[steps])
    # The checkpoint the orphan wrote where it stopped is listed too, as a preemption's is.
    listed = [c.step_number for c in srv.client.fine_tuning.jobs.checkpoints.list(job.id).data]
    assert sorted(listed) == [state.step, steps], listed
    assert_files_whole(srv)
    assert_no_leftovers(srv)
    assert pid not in trainer_pids(job.id)


# ---- 4. during a checkpoint write ------------------------------------------------------------------------------
def writing_checkpoint(srv: TuneryProcess, job_id: str) -> int | None:
    """The step of a checkpoint being written now (files of it stored or being stored, its manifest not yet)."""
    root = f"jobs/{job_id}/checkpoints/"
    keys = srv.store.list(root) + srv.store.incomplete(root)
    steps: dict[int, bool] = {}
    for key in keys:
        step_dir, _, rest = key[len(root) :].partition("/")
        step = int(step_dir.removeprefix("step-"))
        steps[step] = steps.get(step, False) or rest == "tunery_manifest.json"
    writing = [step for step, complete in steps.items() if not complete]
    if not writing or srv.store.exists(f"{root}step-{max(writing)}/tunery_manifest.json"):
        return None  # none, or it was completed while the store was listed
    return max(writing)


@EMBEDDED_ONLY
def test_kill_during_checkpoint_write(tunery: TuneryProcess) -> None:
    """Killed while the trainer writes a checkpoint (before it can report it), and started again at once: the
    restarted server stops the orphaned trainer wherever it is, the job resumes from its last complete state and
    succeeds, and every planned checkpoint is listed once, whole and servable."""
    srv = tunery
    f = upload_file(srv, chat_lines(STEPS))
    job = create_job(srv, f.id, epochs=1, training={"n_checkpoints": 4})  # 12, 24, 36 and 48
    planned = spaced_steps(STEPS, 4)
    step = wait_for(lambda: writing_checkpoint(srv, job.id), 240, "a checkpoint being written", every=0.002)
    srv.kill()
    assert step in planned and step < STEPS
    assert step not in srv.checkpoint_steps(job.id), "the kill landed after the checkpoint was reported"
    srv.start()
    srv.wait_job(job.id, {"succeeded", "failed", "cancelled"})
    assert_job_whole(srv, job.id, steps=STEPS, planned=planned)
    assert_files_whole(srv)
    assert_no_leftovers(srv)
