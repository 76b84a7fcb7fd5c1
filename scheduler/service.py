"""The scheduler: validates files, resolves hyperparameters, launches queued jobs, watches and stops runs.

It is one loop (a thread in the embedded server) that works from the metadata store alone, so it picks up
where it left off after a restart. ``Scheduler`` wires its parts together and runs the loop; each part lives in a
module of its own:

- scheduler.claims: which replica holds a job or a file (claims, leases, heartbeat, taking over lapsed runs);
- scheduler.preprocess: validating files and jobs on worker threads, the hardware check and the estimate;
- scheduler.dispatch: launching queued jobs within quota;
- scheduler.specs: the JobSpec of a run (pure);
- scheduler.runs: the run lifecycle (cancel, reap, crash, pause, failure) and the trainer logs.

Several replicas may run on one PostgreSQL database; scheduler.claims says how they share the work.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.backends import Backend, RunStatus
from scheduler.claims import Claims
from scheduler.context import SchedulerContext
from scheduler.dispatch import Dispatcher
from scheduler.expiry import ExpirySweep
from scheduler.preprocess import Preprocessor
from scheduler.runs import RunLifecycle, TrainerLogs, run_crashed
from scheduler.webhooks import WebhookSender
from tunery.db import Database, Job
from tunery.filescan import ScanOptions
from tunery.metrics import Metrics
from tunery.settings import Settings
from tunery.storage import ObjectStore
from tunery.uploads import sweep_expired as sweep_expired_uploads

if TYPE_CHECKING:
    from scheduler.leader import LeaderElector

__all__ = ["Scheduler", "run_crashed"]

log = logging.getLogger("tunery.scheduler")

SWEEP_SECONDS = 10.0  # how often the backend removes what finished runs left behind (scheduler.k8s: Jobs past TTL)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: ObjectStore,
        backend: Backend,
        reporting_address: str,
        log_dir: Path,
        leader: LeaderElector | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.leader = leader
        self.metrics = metrics or Metrics()
        self.db = db
        self.store = store
        self.backend = backend
        self.reporting_address = reporting_address
        self.log_dir = log_dir
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = leader is None
        self.replica_id = settings.resolved_scheduler_replica_id
        self.lease_seconds = settings.scheduler_lease_seconds
        self._last_sweep = float("-inf")
        self.file_expiry = ExpirySweep(db, store)
        self.claims = Claims(db, backend, self.replica_id, self.lease_seconds)
        self.logs = TrainerLogs(log_dir, store)
        ctx = SchedulerContext(settings, db, store, backend, self.metrics, self.replica_id)
        self.runs = RunLifecycle(ctx, self.logs)
        self.preprocess = Preprocessor(ctx, self.claims, self.wake)
        self.dispatch = Dispatcher(ctx, self.claims, self.logs, reporting_address)
        # Webhook deliveries (scheduler/webhooks.py): sent by the replica that leads, on a thread of their own.
        self.webhooks = WebhookSender(settings, db, self.is_leading)

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.leader is None:
            self.recover()
        else:
            self.leader.start()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        self.webhooks.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.webhooks.stop()
        self.preprocess.shutdown()
        if self.leader is not None:
            self.leader.stop()
        self.backend.close()
        # Validations are cheap to redo: another replica may take them at once. Runs stay claimed until the
        # lease lapses (a backend's runs may outlive this process; a restart under the same id takes them back).
        try:
            self.db.transaction(self.claims.release_validations)
        except Exception:
            log.exception("could not release this replica's validation claims")

    def wake(self) -> None:
        self._wake.set()
        self.webhooks.wake()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._may_work():
                    with self.metrics.pass_seconds.time():
                        self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self._wake.wait(self.settings.scheduler_poll_seconds)
            self._wake.clear()

    def is_leading(self) -> bool:
        """Whether this replica launches and watches runs: always without leader election, else while it holds
        the Lease."""
        return self.leader is None or self.leader.is_leader()

    def _may_work(self) -> bool:
        """Without leader election, always; with it, only while this replica holds the Lease. A replica that
        becomes the leader first recovers (adopts the runs of the previous leader)."""
        if self.leader is None:
            self.metrics.leader.set(1)
            return True
        self.metrics.leader.set(1 if self.leader.is_leader() else 0)
        if not self.leader.is_leader():
            if self._leading:
                log.warning("lost the scheduler lease: not launching or watching runs")
            self._leading = False
            return False
        if not self._leading:
            log.info("this replica leads the scheduler: recovering runs")
            self.recover()
            self._leading = True
        return True

    def tick(self) -> None:
        """One pass: renew claims (and take over lapsed ones), stop cancelled runs, reap finished ones, validate
        new files and jobs, launch queued ones, expire uploads and delete files past their expiry."""
        self.heartbeat()
        self.stop_cancelled()
        self.reap()
        self.validate_uploaded_files()
        self.validate_pending()
        self.launch_queued()
        sweep_expired_uploads(
            self.db, self.store, completing_stale_seconds=self.settings.upload_completing_stale_seconds
        )
        self.file_expiry.run()
        self.sweep_finished_runs()

    def sweep_finished_runs(self, force: bool = False) -> None:
        """Let the backend remove what finished runs left behind (Kubernetes: Jobs past their TTL), at most every
        SWEEP_SECONDS. Runs still recorded on any job are spared: their end has not been taken in yet."""
        t = time.monotonic()
        if not force and t - self._last_sweep < SWEEP_SECONDS:
            return
        self._last_sweep = t
        with self.db.session() as s:
            active = {h for h in s.scalars(select(Job.run_handle).where(Job.run_handle.is_not(None))) if h}
        try:
            self.metrics.runs_swept.inc(self.backend.sweep(active))
        except Exception:
            log.warning("could not sweep finished runs", exc_info=True)

    # Claims (scheduler.claims) -----------------------------------------------------------------
    def heartbeat(self, force: bool = False) -> None:
        """Renew this replica's claims and take over lapsed ones; at most every third of the lease."""
        self.claims.heartbeat(force)

    def take_over(self, *, own: bool = False) -> int:
        """Queue again the jobs whose replica stopped renewing its claim (with ``own``, this replica's own runs
        from before it (re)started too). Returns how many jobs were queued."""
        return self.claims.take_over(own=own)

    def recover(self) -> None:
        """Runs left by this replica's previous process, or by replicas whose claims lapsed, are gone: stop
        leftovers and queue their jobs again. Runs of live replicas are left alone."""
        self.claims.recover()

    # Preprocessing (scheduler.preprocess) ------------------------------------------------------
    def validate_uploaded_files(self) -> None:
        """New training files: write each one's validation report and set its status (processed | error)."""
        self.preprocess.validate_uploaded_files()

    def validate_pending(self) -> None:
        """Jobs whose files are to be checked: claim as many as there are free validation workers."""
        self.preprocess.validate_pending()

    def scan_options(self, model: tuple[str, str] | None, max_seq_length: int | None = None) -> ScanOptions:
        return self.preprocess.scan_options(model, max_seq_length)

    # Dispatch (scheduler.dispatch) -------------------------------------------------------------
    def launch_queued(self) -> None:
        """Claim queued jobs up to this replica's free run slots, within each project's quota, and start them."""
        self.dispatch.launch_queued()

    # Runs (scheduler.runs) ---------------------------------------------------------------------
    def stop_cancelled(self) -> None:
        self.runs.stop_cancelled()

    def reap(self) -> None:
        """Notice this replica's runs that ended (or that the backend has news of) and act on how they ended."""
        self.runs.reap()

    def on_crash(self, s: Session, job: Job, st: RunStatus, handle: str) -> None:
        self.runs.on_crash(s, job, st, handle)

    def on_paused(self, s: Session, job: Job) -> None:
        self.runs.on_paused(s, job)

    def log_path(self, job_id: str) -> Path:
        return self.logs.path(job_id)
