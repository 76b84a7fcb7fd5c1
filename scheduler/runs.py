"""The run lifecycle: stopping cancelled runs, reaping ended ones (crash, pause, failure), failing jobs, and the
trainer logs each run leaves beside the scheduler."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.backends import RunStatus
from scheduler.claims import clear_run, release
from scheduler.context import SchedulerContext, SchedulerPart
from tunery import jobstate, layout
from tunery.db import Database, Job
from tunery.db.ops import add_event, now
from tunery.jobstate import ErrorCode, JobError, JobStatus
from tunery.resume import latest_state
from tunery.storage import ObjectStore

log = logging.getLogger("tunery.scheduler")

# The trainer's exit code after a pause or a preemption (trainer/errors.py; the control plane never imports it).
EXIT_PREEMPTED = 4


def run_crashed(st: RunStatus) -> bool:
    """A run that ended without reporting its outcome is a crash (or a preemption), not a failure of the job, when
    it was killed from outside (a signal: negative or >= 128), preempted, or the backend says so; other exit codes
    (a bad command line, a refused run) fail the job."""
    code = st.exit_code
    return st.crashed or code is None or code < 0 or code >= 128 or code == EXIT_PREEMPTED


def fail(db: Database, job_id: str, error: JobError) -> None:
    """Fail a job in a transaction of its own, unless it is already over."""

    def fail(s: Session) -> None:
        job = s.scalar(select(Job).where(Job.id == job_id))
        if job is not None and jobstate.allowed(job, jobstate.Transition.fail):  # not already over
            fail_in(s, job, error)

    db.transaction(fail)


def fail_in(s: Session, job: Job, error: JobError) -> None:
    """Fail a job in the caller's transaction: its run is forgotten, the failure recorded as an event."""
    clear_run(job)
    jobstate.fail(job, error, now())
    add_event(s, job.id, jobstate.failure_event(error, job.kind), level="error")


class TrainerLogs:
    """The trainer's output of each run: a file under the log folder, kept in the object store when the run ends."""

    def __init__(self, log_dir: Path, store: ObjectStore):
        self.log_dir = log_dir
        self.store = store

    def path(self, job_id: str) -> Path:
        return self.log_dir / f"{job_id}.log"

    def keep(self, job_id: str) -> None:
        path = self.path(job_id)
        if path.is_file():
            self.store.put_file(layout.log_key(layout.job_prefix(job_id)), path)

    def tail(self, job_id: str, chars: int = 300) -> str:
        path = self.path(job_id)
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][-chars:] if lines else ""


class RunLifecycle(SchedulerPart):
    """This replica's runs once started: cancelled ones are stopped, ended ones reaped, crashed ones queued again."""

    def __init__(self, ctx: SchedulerContext, logs: TrainerLogs):
        super().__init__(ctx)
        self.logs = logs

    def _job_ids(self, *conditions) -> list[str]:  # type: ignore[no-untyped-def]
        with self.db.session() as s:
            return list(s.scalars(select(Job.id).where(*conditions).order_by(Job.pk)))

    def stop_cancelled(self) -> None:
        # Only the replica that launched a run can stop it (a local process is a child of that replica).
        mine = Job.claimed_by == self.replica_id
        for job_id in self._job_ids(Job.cancel_requested.is_(True), Job.run_handle.is_not(None), mine):

            def take_handle(s: Session, job_id: str = job_id) -> str | None:
                job = s.scalar(select(Job).where(Job.id == job_id))
                if job is None or not job.run_handle or job.claimed_by != self.replica_id:
                    return None
                handle = job.run_handle
                clear_run(job)
                return handle

            handle = self.db.transaction(take_handle)
            if handle:
                log.info("stopping run %s of cancelled job %s", handle, job_id)
                self.backend.cancel(handle)

    def reap(self) -> None:
        """Notice this replica's runs whose process ended: a run that never reported its outcome failed. What the
        backend says about a run still going (a pod waiting for GPUs, an image that cannot be pulled) becomes job
        events."""
        with self.db.session() as s:
            runs = list(
                s.execute(
                    select(Job.id, Job.run_handle)
                    .where(
                        Job.run_handle.is_not(None),
                        Job.cancel_requested.is_(False),
                        Job.claimed_by == self.replica_id,
                    )
                    .order_by(Job.pk)
                )
            )
        for job_id, handle in runs:
            assert handle is not None
            # Asked once, outside the transaction: a retried transaction must not lose the run's new events.
            st = self.backend.status(handle)
            if st.running and not st.events:
                continue

            def check(s: Session, job_id: str = job_id, handle: str = handle, st: RunStatus = st) -> None:
                job = s.scalar(select(Job).where(Job.id == job_id))
                if job is None or job.run_handle != handle or job.claimed_by != self.replica_id:
                    return
                if job.status == JobStatus.running:
                    for ev in st.events:
                        add_event(s, job.id, ev.message, level=ev.level, data=ev.data)
                if st.running:
                    return
                self.logs.keep(job.id)
                job.run_handle = None
                if job.pause_requested:
                    self.on_paused(s, job)
                    return
                if job.status != JobStatus.running:
                    release(job)
                    return  # it reported its outcome before exiting
                if run_crashed(st):
                    self.on_crash(s, job, st, handle)
                    return
                self._fail_run(s, job, st)

            self.db.transaction(check)

    def _fail_run(self, s: Session, job: Job, st: RunStatus) -> None:
        message = st.error or f"The trainer exited (code {st.exit_code}) before finishing."
        # The trainer's output is for the operator (this log and the run's log object), never for the API client:
        # it can hold paths, hosts and the cluster's internals.
        log.warning("job %s failed: %s Last output: %s", job.id, message, self.logs.tail(job.id) or "(none)")
        fail_in(s, job, JobError(ErrorCode.training_error, message))

    def on_crash(self, s: Session, job: Job, st: RunStatus, handle: str) -> None:
        """A run that ended without the trainer's say (killed, pod lost or evicted, OOM), or that was preempted
        (SIGTERM: it saved its state first). The job is queued again and its next run resumes from the last
        complete checkpoint (or starts over when there is none), up to TUNERY_MAX_RUN_RETRIES restarts after
        crashes; preemptions are not counted. The run's leftovers (a Job whose controller would start a fresh pod)
        are removed."""
        self.backend.cancel(handle)
        state = latest_state(self.store, layout.job_prefix(job.id))
        where = f"checkpoint step {state.step}" if state is not None else "the beginning (no complete checkpoint)"
        data = {"exit_code": st.exit_code, "resume_step": state.step if state else None}
        if st.exit_code == EXIT_PREEMPTED and not st.crashed:
            self.metrics.run_restarts.labels("preemption").inc()
            self._requeue(job)
            add_event(s, job.id, f"The trainer was preempted and saved its state; resuming from {where}", data=data)
            return
        reason = st.error or f"exit code {st.exit_code}"
        limit = self.settings.max_run_retries
        if job.crash_restarts >= limit:
            add_event(s, job.id, f"The trainer stopped unexpectedly ({reason})", level="error", data=data)
            message = (
                f"The trainer stopped unexpectedly ({reason}) after {limit} restart(s); giving up "
                "(TUNERY_MAX_RUN_RETRIES)."
            )
            self._fail_run(s, job, dataclasses.replace(st, error=message))
            return
        job.crash_restarts += 1
        self.metrics.run_restarts.labels("crash").inc()
        self._requeue(job)
        add_event(
            s,
            job.id,
            f"The trainer stopped unexpectedly ({reason}); restarting from {where} "
            f"(attempt {job.crash_restarts + 1} of {limit + 1})",
            level="warn",
            data={**data, "attempt": job.crash_restarts + 1, "max_attempts": limit + 1},
        )

    def on_paused(self, s: Session, job: Job) -> None:
        """The run of a paused job ended (it saved its state at a step boundary, or died meanwhile)."""
        clear_run(job)
        jobstate.pause_done(job)
        if job.status != JobStatus.paused:
            return  # resumed (queued) or cancelled while it was stopping
        state = latest_state(self.store, layout.job_prefix(job.id))
        where = f"at step {state.step}" if state is not None else "before its first checkpoint"
        add_event(
            s,
            job.id,
            f"Fine-tuning job paused {where}",
            data={"step": state.step if state else None, "total_steps": job.total_steps},
        )

    def _requeue(self, job: Job) -> None:
        clear_run(job)
        jobstate.requeue(job)
