"""The expiry sweep of files, and of what crashed processes left in the object store (:func:`sweep_leftovers`).

A File past its ``expires_at`` (``expires_after`` of ``POST /v1/files`` or of ``POST /v1/uploads``) is deleted
for good, the way ``DELETE /v1/files/{id}`` deletes one (``tunery.files``).

The API treats such a file as gone the moment it expires (404, not listed, refused as a job's file); this sweep,
run from the scheduler's loop (so by the leader alone when there is leader election) at most every
``SWEEP_SECONDS``, then deletes its row, its content and its validation reports.

A file that an unfinished job uses (its training, validation or mix file, the job not yet succeeded, failed or
cancelled) is kept until that job ends, hidden all the same: the trainer reads the file from the object store when
each run starts, and again when the job resumes after a pause or a crash, so a job accepted with the file keeps
running on it, as OpenAI's do. It is deleted by the first sweep after the job ends.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery import files, uploads
from tunery.db import Database, File, Job
from tunery.db.ops import now
from tunery.jobstate import TERMINAL
from tunery.storage import ObjectStore

log = logging.getLogger("tunery.scheduler.expiry")

# How often the scheduler looks for expired files (a query on ``files.expires_at``, which has no index of its own).
SWEEP_SECONDS = 10.0


def files_in_use(s: Session) -> set[str]:
    """The files unfinished jobs use: their training, validation and mix files."""
    jobs = s.scalars(select(Job).where(Job.status.not_in(list(TERMINAL))))
    return {file_id for job in jobs for _, file_id in job.input_files()}


def sweep_expired_files(db: Database, store: ObjectStore, at: int | None = None, batch: int = 200) -> int:
    """Delete the files expired at ``at`` (now by default) that no unfinished job uses; returns how many."""
    t = now() if at is None else at
    with db.session() as s:
        if s.scalar(select(File.id).where(files.expired(t)).limit(1)) is None:
            return 0  # the usual case: one query
        kept = files_in_use(s)
        due = list(
            s.scalars(select(File.id).where(files.expired(t), File.id.not_in(kept)).order_by(File.pk).limit(batch))
        )
    # Each deletion checks the expiry again in its own statement: a file given a later expiry meanwhile stays.
    return sum(files.delete_file(db, store, file_id, files.expired(t)) for file_id in due)


# How often the scheduler looks for what crashed processes left in the object store (it lists prefixes), and how long
# an unfinished write must have been idle to count as left behind (a live upload writes every few seconds).
LEFTOVER_SWEEP_SECONDS = 600.0
LEFTOVER_AGE_SECONDS = 3600.0


def sweep_leftovers(db: Database, store: ObjectStore, older_than: float = LEFTOVER_AGE_SECONDS) -> int:
    """Remove what processes killed mid-write left behind: unfinished writes (``.part`` files of the local store,
    multipart uploads on S3) idle for ``older_than`` seconds, and the objects of closed uploads. Returns how many."""
    return store.sweep_incomplete("", older_than) + uploads.sweep_orphans(db, store)


class ExpirySweep:
    """``sweep_expired_files`` from the scheduler's loop, at most every ``interval`` seconds; failures are logged,
    never raised into the loop."""

    def __init__(self, db: Database, store: ObjectStore, interval: float | None = None):
        self.db = db
        self.store = store
        self.interval = SWEEP_SECONDS if interval is None else interval
        self._last = float("-inf")
        self._last_leftovers = float("-inf")

    def run(self, force: bool = False) -> int:
        t = time.monotonic()
        if not force and t - self._last < self.interval:
            return 0
        self._last = t
        if force or t - self._last_leftovers >= LEFTOVER_SWEEP_SECONDS:
            self._last_leftovers = t
            try:
                if n := sweep_leftovers(self.db, self.store):
                    log.info("removed %d leftover(s) of interrupted writes and closed uploads", n)
            except Exception:
                log.warning("could not sweep leftovers", exc_info=True)
        try:
            return sweep_expired_files(self.db, self.store)
        except Exception:
            log.warning("could not sweep expired files", exc_info=True)
            return 0
