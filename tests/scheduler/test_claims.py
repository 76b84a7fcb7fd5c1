"""Several scheduler replicas on one PostgreSQL database: every job is launched exactly once, a live replica's
runs are never taken, a replica that stopped renewing its claims loses them; and the embedded (SQLite) server
still takes its own runs back when it restarts.

The backend is the real LocalProcessBackend, each launch recorded as the scheduler makes it; the "trainer" it runs is
a shell script that sleeps, standing in for `python -m trainer` (which would report back over gRPC).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from scheduler.backends import LocalProcessBackend
from scheduler.service import Scheduler
from tunery import ids
from tunery.db import Database, File, Job, JobEvent
from tunery.db.ops import now
from tunery.jobstate import TERMINAL
from tunery.settings import Settings
from tunery.storage import open_store

FAKE_TRAINER = """#!/bin/sh
# Called as: <this> -m trainer --spec <ref>. Runs for $FAKE_SECONDS.
sleep "$FAKE_SECONDS"
"""


class RecordingBackend(LocalProcessBackend):
    """The real local backend, recording (replica, job id) of each launch in the order the scheduler makes them
    (the started processes would record theirs in the order they happen to run)."""

    def __init__(self, replica_id: str, record: list[tuple[str, str]], lock: threading.Lock, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.replica_id, self.record, self.lock = replica_id, record, lock

    def launch(self, job_id: str, *args: Any, **kwargs: Any) -> str:
        with self.lock:
            self.record.append((self.replica_id, job_id))
        return super().launch(job_id, *args, **kwargs)


class Replicas:
    """Builds schedulers on one database, each with its own LocalProcessBackend and replica id."""

    def __init__(self, tmp: Path, url: str):
        self.tmp = tmp
        self.url = url
        self._launches: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.trainer = tmp / "fake-trainer.sh"
        self.trainer.write_text(FAKE_TRAINER)
        self.trainer.chmod(self.trainer.stat().st_mode | stat.S_IEXEC)
        self.db = Database(url)
        if url.startswith("sqlite"):
            self.db.upgrade()
        self.store = open_store((tmp / "objects").as_uri())
        self.schedulers: list[Scheduler] = []

    def scheduler(self, replica_id: str, *, seconds: float = 0.3, **overrides: Any) -> Scheduler:
        opts: dict[str, Any] = {
            "data_dir": self.tmp,
            "database_url": self.url,
            "demo_model": False,
            "base_models": {"tiny": str(self.tmp / "no-model")},
            "scheduler_replica_id": replica_id,
            "scheduler_poll_seconds": 0.05,
            "max_concurrent_runs": 2,
            "cancel_grace_seconds": 1.0,
            "trainer_device": "cpu",
            **overrides,
        }
        settings = Settings(**opts)
        env = {"FAKE_SECONDS": str(seconds)}
        backend = RecordingBackend(
            replica_id, self._launches, self._lock, str(self.trainer), grace_seconds=1.0, env=env
        )
        db = Database(settings.resolved_database_url)
        sched = Scheduler(settings, db, self.store, backend, "127.0.0.1:1", self.tmp / "logs" / replica_id)
        self.schedulers.append(sched)
        return sched

    def queue_jobs(self, n: int) -> list[str]:
        """n jobs, validated and queued, on one training file."""
        file_id = ids.file_id()
        job_ids = [ids.job_id() for _ in range(n)]
        hp = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}
        with self.db.session() as s:
            s.add(
                File(
                    id=file_id,
                    organization_id="org-default",
                    project_id="proj_default",
                    filename="train.jsonl",
                    purpose="fine-tune",
                    bytes=1,
                    sha256=None,
                    object_key=f"files/{file_id}",
                    created_at=now(),
                    status="processed",
                )
            )
            for job_id in job_ids:
                s.add(
                    Job(
                        id=job_id,
                        organization_id="org-default",
                        project_id="proj_default",
                        created_at=now(),
                        status="queued",
                        model="tiny",
                        base_model="tiny",
                        training_file=file_id,
                        seed=1,
                        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
                        hyperparameters=hp,
                        result_files=[],
                        fine_tuned_model=f"ft:tiny:personal::{job_id}",
                        attempts=0,
                        cancel_requested=False,
                    )
                )
        return job_ids

    def jobs(self) -> dict[str, Job]:
        with self.db.session() as s:
            return {j.id: j for j in s.scalars(select(Job))}

    def events(self, job_id: str) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.pk)))

    def launched(self) -> list[tuple[str, str]]:
        """(replica, job id) of every launch, in order."""
        with self._lock:
            return list(self._launches)

    def close(self) -> None:
        for sched in self.schedulers:
            sched.stop()
            sched.db.engine.dispose()
        self.db.engine.dispose()


@pytest.fixture
def pg_replicas(tmp_path: Path, migrated_pg_url: str):  # type: ignore[no-untyped-def]
    r = Replicas(tmp_path, migrated_pg_url)
    yield r
    r.close()


def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def test_two_replicas_launch_every_job_exactly_once(pg_replicas: Replicas) -> None:
    a, b = pg_replicas.scheduler("replica-a"), pg_replicas.scheduler("replica-b")
    a.start()
    b.start()
    job_ids = pg_replicas.queue_jobs(24)
    a.wake()
    b.wake()
    wait_for(lambda: all(j.status in TERMINAL for j in pg_replicas.jobs().values()), what="every job finished")

    launched = pg_replicas.launched()
    per_job = Counter(job_id for _, job_id in launched)
    assert set(per_job) == set(job_ids)
    assert [j for j, n in per_job.items() if n != 1] == []  # no job launched twice
    per_replica = Counter(replica for replica, _ in launched)
    print(f"launches per replica: {dict(per_replica)}")
    assert set(per_replica) == {"replica-a", "replica-b"}  # both really competed (each runs at most 2 at once)
    jobs = pg_replicas.jobs()
    assert {j.attempts for j in jobs.values()} == {1}
    # The fake trainer exits without reporting: the replica that launched the run reaps it as failed, once.
    assert {j.status for j in jobs.values()} == {"failed"}
    for job_id in job_ids:
        assert pg_replicas.events(job_id).count("Fine-tuning job started") == 1


def test_a_locked_queued_job_is_skipped_not_waited_for(pg_replicas: Replicas) -> None:
    """While one replica holds the row of the oldest queued job (claiming it), another launches the next ones."""
    first, *rest = pg_replicas.queue_jobs(3)
    b = pg_replicas.scheduler("replica-b", seconds=30)
    holder = Database(pg_replicas.url)
    try:
        with holder.session() as s:
            s.scalar(select(Job).where(Job.id == first).with_for_update())  # replica A, mid-claim
            done = threading.Event()

            def launch() -> None:
                b.launch_queued()
                done.set()

            t = threading.Thread(target=launch, daemon=True)
            t.start()
            assert done.wait(30), "launch_queued waited for the locked row instead of skipping it"
    finally:
        holder.engine.dispose()
    jobs = pg_replicas.jobs()
    assert jobs[first].status == "queued" and jobs[first].claimed_by is None
    assert [jobs[j].status for j in rest] == ["running", "running"]
    assert {jobs[j].claimed_by for j in rest} == {"replica-b"}


def test_live_replicas_runs_are_kept_and_lapsed_ones_taken_over(pg_replicas: Replicas) -> None:
    a = pg_replicas.scheduler("replica-a", seconds=60)
    [job_id] = pg_replicas.queue_jobs(1)
    a.recover()
    a.launch_queued()
    job = pg_replicas.jobs()[job_id]
    assert (job.status, job.claimed_by) == ("running", "replica-a")
    handle = job.run_handle
    assert handle and handle.startswith("pid:")

    # A second replica starts while A is alive: it leaves A's run alone.
    b = pg_replicas.scheduler("replica-b", seconds=60)
    b.recover()
    b.tick()
    job = pg_replicas.jobs()[job_id]
    assert (job.status, job.claimed_by, job.attempts) == ("running", "replica-a", 1)
    assert a.backend.status(handle).running

    # A stops renewing its claim (it hangs, or its machine went away) and the lease lapses.
    with pg_replicas.db.session() as s:
        s.execute(update(Job).where(Job.claimed_by == "replica-a").values(lease_expires_at=now() - 1))
    b.heartbeat(force=True)
    job = pg_replicas.jobs()[job_id]
    assert (job.status, job.claimed_by, job.run_handle, job.run_token) == ("queued", None, None, None)
    assert pg_replicas.events(job_id)[-1] == "The scheduler running the job stopped: the job was queued again"
    # B stopped A's trainer (same machine here: the handle names the host).
    wait_for(lambda: not a.backend.status(handle).running, timeout=10, what="A's trainer stopped")

    b.launch_queued()
    job = pg_replicas.jobs()[job_id]
    assert (job.status, job.claimed_by, job.attempts) == ("running", "replica-b", 2)

    # A comes back: it renews nothing of B's and reaps nothing of B's.
    a.heartbeat(force=True)
    a.tick()
    job = pg_replicas.jobs()[job_id]
    assert (job.status, job.claimed_by) == ("running", "replica-b")
    assert b.backend.status(job.run_handle or "").running


def test_the_lease_is_renewed_while_the_replica_lives(pg_replicas: Replicas) -> None:
    a = pg_replicas.scheduler("replica-a", seconds=60, scheduler_lease_seconds=30)
    [job_id] = pg_replicas.queue_jobs(1)
    a.launch_queued()
    with pg_replicas.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=now() + 1))
    version = pg_replicas.jobs()[job_id].version
    a.heartbeat(force=True)
    job = pg_replicas.jobs()[job_id]
    assert job.lease_expires_at is not None and job.lease_expires_at >= now() + 25
    assert job.version == version  # renewing the lease is no change of the job (no optimistic-lock conflicts)


def test_embedded_restart_takes_its_own_runs_back_at_once(tmp_path: Path) -> None:
    """SQLite, one replica ("embedded"): a server that died mid-run queues that run again when it restarts,
    without waiting for the lease, and stops the trainer it left behind."""
    r = Replicas(tmp_path, f"sqlite:///{tmp_path / 'tunery.db'}")
    try:
        first = r.scheduler("", seconds=60)  # the default replica id on SQLite
        assert first.replica_id == "embedded"
        [job_id] = r.queue_jobs(1)
        first.recover()
        first.launch_queued()
        handle = r.jobs()[job_id].run_handle
        assert handle and first.backend.status(handle).running

        # The process "dies": no stop(), no release. A new one starts on the same data dir.
        second = r.scheduler("", seconds=60)
        second.recover()
        job = r.jobs()[job_id]
        assert (job.status, job.claimed_by, job.run_handle) == ("queued", None, None)
        assert r.events(job_id)[-1] == "The control plane restarted: the job was queued again"
        wait_for(lambda: not first.backend.status(handle).running, timeout=10, what="the leftover trainer stopped")
        second.launch_queued()
        job = r.jobs()[job_id]
        assert (job.status, job.claimed_by, job.attempts) == ("running", "embedded", 2)
    finally:
        r.close()


def test_validation_claims_are_exclusive(pg_replicas: Replicas) -> None:
    """A job waiting for validation is claimed by one replica; the other does not validate it too, until the
    first gives it back."""
    [job_id] = pg_replicas.queue_jobs(1)
    with pg_replicas.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="validating_files"))
    a, b = pg_replicas.scheduler("replica-a"), pg_replicas.scheduler("replica-b")
    validated: list[str] = []
    for sched in (a, b):
        sched.preprocess._validate_job = lambda job_id, sched=sched: validated.append(sched.replica_id)  # type: ignore[method-assign,misc]
    a.validate_pending()
    b.validate_pending()
    wait_for(lambda: len(validated) >= 1, timeout=10, what="a validation")
    a.preprocess._validation.shutdown(wait=True)
    b.preprocess._validation.shutdown(wait=True)
    assert validated == ["replica-a"]
    assert pg_replicas.jobs()[job_id].claimed_by == "replica-a"

    # A stops cleanly before finishing: it gives the validation back, and B takes it at once.
    a.stop()
    assert pg_replicas.jobs()[job_id].claimed_by is None
    b.preprocess._validation = ThreadPoolExecutor(max_workers=2)
    b.validate_pending()
    b.preprocess._validation.shutdown(wait=True)
    assert validated == ["replica-a", "replica-b"]


def test_replica_ids_default(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).resolved_scheduler_replica_id == "embedded"
    pg = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u@h/db")
    assert pg.resolved_scheduler_replica_id.endswith(f"-{os.getpid()}")
    assert Settings(data_dir=tmp_path, scheduler_replica_id="pod-1").resolved_scheduler_replica_id == "pod-1"
