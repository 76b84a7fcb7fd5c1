"""Claims and leases: which scheduler replica holds a job or a file, renewing them, and taking over lapsed ones.

Several replicas may run on one PostgreSQL database. Each has a replica id; whatever one takes (a queued job to
launch, a job or a file to validate, the run of a replica that stopped) it claims in one transaction that locks the
rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` and records itself in ``claimed_by``, so exactly one replica gets each.
A claim holds until ``lease_expires_at``; the replica renews it while it is alive (a heartbeat every third of
``TUNERY_SCHEDULER_LEASE_SECONDS``), and once it lapses another replica takes the job over: a run is queued again
(its trainer, stopped where it can be, is refused by the reporting service from then on), a validation starts again.
On SQLite (one writer) the row locks are no-ops and there is one replica, ``embedded``, which takes its own runs
back at once when it starts again.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from scheduler.backends import Backend
from tunery import jobstate
from tunery.db import Database, File, Job
from tunery.db.ops import add_event, now
from tunery.jobstate import OWNED, JobStatus

log = logging.getLogger("tunery.scheduler")


def lapsed(model: type[Job] | type[File], t: int) -> ColumnElement[bool]:
    """Rows nobody holds: never claimed, released, or claimed by a replica that stopped renewing its claim."""
    return or_(model.claimed_by.is_(None), model.lease_expires_at.is_(None), model.lease_expires_at < t)


def release(job: Job | File) -> None:
    job.claimed_by = None
    job.lease_expires_at = None


def clear_run(job: Job) -> None:
    job.run_handle = None
    job.run_token = None
    job.estimated_finish = None
    release(job)


class Claims:
    """This replica's claims: taking rows, renewing the lease on them, and taking over the ones that lapsed."""

    def __init__(self, db: Database, backend: Backend, replica_id: str, lease_seconds: int):
        self.db = db
        self.backend = backend
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self._last_heartbeat = float("-inf")

    def claim(self, row: Job | File) -> None:
        row.claimed_by = self.replica_id
        row.lease_expires_at = now() + self.lease_seconds

    def heartbeat(self, force: bool = False) -> None:
        """Renew this replica's claims and take over lapsed ones; at most every third of the lease."""
        t = time.monotonic()
        if not force and t - self._last_heartbeat < self.lease_seconds / 3:
            return
        until = now() + self.lease_seconds

        def renew(s: Session) -> None:
            # Plain UPDATEs: the lease is no part of the job's optimistic version.
            s.execute(
                update(Job)
                .where(Job.claimed_by == self.replica_id, or_(Job.status.in_(OWNED), Job.run_handle.is_not(None)))
                .values(lease_expires_at=until)
                .execution_options(synchronize_session=False)
            )
            s.execute(
                update(File)
                .where(File.claimed_by == self.replica_id, File.status == "uploaded")
                .values(lease_expires_at=until)
                .execution_options(synchronize_session=False)
            )

        self.db.transaction(renew)
        self._last_heartbeat = t
        self.take_over()

    def take_over(self, *, own: bool = False) -> int:
        """Runs whose replica stopped renewing its claim are gone: stop what is left and queue the jobs again.
        With ``own``, this replica's own runs from before it (re)started too. Returns how many jobs were queued."""
        t = now()
        gone = lapsed(Job, t)
        if own:
            gone = or_(gone, Job.claimed_by == self.replica_id)

        def requeue(s: Session) -> tuple[list[str], int]:
            handles, queued = [], 0
            q = (
                select(Job)
                .where(or_(Job.status == JobStatus.running, Job.run_handle.is_not(None)), gone)
                .order_by(Job.pk)
                .with_for_update(skip_locked=True)
            )
            for job in s.scalars(q):
                if job.status == JobStatus.running and self.backend.adopts_runs:
                    adopted = self.backend.adopt(job.id, job.run_handle)
                    if adopted:  # the run outlives its scheduler (a Kubernetes Job): this replica watches it now
                        job.run_handle = adopted
                        self.claim(job)
                        add_event(s, job.id, "The scheduler restarted and adopted the running trainer run")
                        continue
                handles.append(job.run_handle or "")
                if job.status != JobStatus.running:
                    release(job)  # finished, cancelled or paused; only its handle was left
                    job.run_handle = None
                    if job.pause_requested:
                        jobstate.pause_done(job)
                    continue
                mine = job.claimed_by == self.replica_id
                clear_run(job)
                jobstate.requeue(job)
                queued += 1
                add_event(
                    s,
                    job.id,
                    "The control plane restarted: the job was queued again"
                    if mine
                    else "The scheduler running the job stopped: the job was queued again",
                    level="warn",
                    data={"previous_scheduler": None if mine else job.claimed_by},
                )
            if own:  # validations this replica had started before it stopped: anyone may take them again
                self.release_validations(s)
            return handles, queued

        handles, queued = self.db.transaction(requeue)
        for handle in handles:
            if handle:
                self.backend.cancel(handle)
        if queued:
            log.warning("queued %d job(s) again whose scheduler stopped", queued)
        return queued

    def release_validations(self, s: Session) -> None:
        for model, status in ((Job, JobStatus.validating_files), (File, "uploaded")):
            s.execute(
                update(model)
                .where(model.claimed_by == self.replica_id, model.status == status)
                .values(claimed_by=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    def recover(self) -> None:
        """Runs left by this replica's previous process, or by replicas whose claims lapsed, are gone: stop
        leftovers and queue their jobs again. Runs of live replicas are left alone."""
        self.take_over(own=True)
        self.heartbeat(force=True)
