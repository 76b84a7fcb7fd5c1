"""Per-project quotas and the fair queue (docs/tenancy.md, "Quotas and fair scheduling").

* **Limits.** A project's limits are the ``TUNERY_PROJECT_*`` settings unless its row overrides one (the
  administration API: ``tunery.limits`` of ``POST /v1/organization/projects/{id}``); 0 is unlimited.
* **Stored bytes.** A project's files (not expired), its open uploads (their declared ``bytes``) and the
  reservations of files being stored add up to at most ``max_stored_bytes``. A new file or upload is checked
  *before* its bytes are stored, under a lock on its project's row (:func:`lock_project`: an UPDATE, which takes the
  row lock on PostgreSQL and the write lock on SQLite), so concurrent uploads are admitted one after the other and
  never together past the limit.
* **Fair queue.** :func:`fair_order` is the order the scheduler considers queued jobs in: round-robin across
  projects, the project with the fewest jobs running (or already picked) first, the oldest head job breaking ties;
  within a project by ``priority`` (higher first), then age. One project's hundred queued jobs do not starve
  another's one.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tunery import ids
from tunery.db.models import File, Job, Project, StorageReservation, Upload
from tunery.db.ops import now
from tunery.files import live
from tunery.jobstate import JobStatus
from tunery.settings import Settings

# A reservation left by a process killed while it stored its file stops counting after this long.
RESERVATION_SECONDS = 3600
LIMIT_FIELDS = ("max_concurrent_jobs", "gpu_quota", "max_stored_bytes", "requests_per_minute")


@dataclass(frozen=True)
class ProjectLimits:
    """One project's limits; 0: unlimited."""

    max_concurrent_jobs: int = 0
    gpu_quota: int = 0
    max_stored_bytes: int = 0
    requests_per_minute: int = 0

    @classmethod
    def defaults(cls, settings: Settings) -> ProjectLimits:
        return cls(
            max_concurrent_jobs=settings.project_max_concurrent_jobs,
            gpu_quota=settings.project_gpu_quota,
            max_stored_bytes=settings.project_max_stored_bytes,
            requests_per_minute=settings.project_requests_per_minute,
        )

    @classmethod
    def of(cls, project: Project | None, settings: Settings) -> ProjectLimits:
        """The project's own limits where its row sets them, the settings' elsewhere (and for a missing row)."""
        base = cls.defaults(settings)
        if project is None:
            return base
        own = {name: getattr(project, name) for name in LIMIT_FIELDS if getattr(project, name) is not None}
        return cls(**{**base.__dict__, **own})


def project_limits(s: Session, settings: Settings, project_id: str) -> ProjectLimits:
    return ProjectLimits.of(s.scalar(select(Project).where(Project.id == project_id)), settings)


class StorageQuotaExceeded(Exception):
    """A file or upload that would take its project past its stored-bytes quota."""

    def __init__(self, requested: int, used: int, limit: int):
        self.requested, self.used, self.limit = requested, used, limit
        super().__init__(
            f"Storage quota exceeded: the project stores {used} bytes of its {limit}, and this needs {requested} "
            "more. Delete files (or cancel open uploads) to make room, or ask an administrator to raise the "
            "project's max_stored_bytes."
        )


def lock_project(s: Session, project_id: str) -> None:
    """Hold the project's row until the transaction ends: a no-op UPDATE, the one statement that locks a row on
    PostgreSQL and takes SQLite's write lock (a SELECT ... FOR UPDATE is ignored there). Concurrent quota checks of
    one project run one after the other."""
    s.execute(update(Project).where(Project.id == project_id).values(id=Project.id))


def stored_bytes(s: Session, organization_id: str, project_id: str, at: int | None = None) -> int:
    """The bytes counted against a project's quota: its live files, its open uploads (as declared) and the
    reservations of files being stored. One statement, so one snapshot: a file whose row replaces its reservation
    meanwhile (PostgreSQL's READ COMMITTED gives each statement its own) is counted once, never zero times."""
    t = now() if at is None else at
    files = select(func.coalesce(func.sum(File.bytes), 0)).where(
        File.organization_id == organization_id, File.project_id == project_id, live(t)
    )
    uploads = select(func.coalesce(func.sum(Upload.bytes), 0)).where(
        Upload.organization_id == organization_id,
        Upload.project_id == project_id,
        Upload.status.in_(("pending", "completing")),
        Upload.expires_at > t,
    )
    reserved = select(func.coalesce(func.sum(StorageReservation.bytes), 0)).where(
        StorageReservation.organization_id == organization_id,
        StorageReservation.project_id == project_id,
        StorageReservation.expires_at > t,
    )
    return int(s.scalar(select(files.scalar_subquery() + uploads.scalar_subquery() + reserved.scalar_subquery())) or 0)


def admit_bytes(s: Session, settings: Settings, organization_id: str, project_id: str, requested: int) -> bool:
    """Whether the project may store ``requested`` more bytes, checked under its row lock (held until ``s``
    ends: the caller writes what takes the room, an upload's row or a reservation, in the same transaction). False
    when the project has no quota (nothing was locked); StorageQuotaExceeded past it."""
    limit = project_limits(s, settings, project_id).max_stored_bytes
    if not limit:
        return False
    lock_project(s, project_id)
    used = stored_bytes(s, organization_id, project_id)
    if used + requested > limit:
        raise StorageQuotaExceeded(requested, used, limit)
    return True


def reserve_bytes(s: Session, settings: Settings, organization_id: str, project_id: str, requested: int) -> str | None:
    """Reserve room for a file about to be stored: the reservation's id (delete it with :func:`release` when the
    file's row is written, or the store failed), or None when the project has no quota."""
    if not admit_bytes(s, settings, organization_id, project_id, requested):
        return None
    at = now()
    rid = ids.reservation_id()
    s.add(
        StorageReservation(
            id=rid,
            organization_id=organization_id,
            project_id=project_id,
            bytes=requested,
            created_at=at,
            expires_at=at + RESERVATION_SECONDS,
        )
    )
    # Reservations a killed process left behind: gone once they stop counting.
    s.query(StorageReservation).filter(
        StorageReservation.project_id == project_id, StorageReservation.expires_at <= at
    ).delete(synchronize_session=False)
    return rid


def release(s: Session, reservation_id: str | None) -> None:
    if reservation_id is not None:
        s.query(StorageReservation).filter(StorageReservation.id == reservation_id).delete(synchronize_session=False)


# ---- the fair queue ----------------------------------------------------------------------------------------------
class Queued(Protocol):
    """What the fair queue reads of a queued job (a Job row, or a row of these columns)."""

    @property
    def pk(self) -> int: ...
    @property
    def project_id(self) -> str: ...
    @property
    def priority(self) -> int: ...


Q = TypeVar("Q", bound=Queued)


def fair_order(queued: Iterable[Q], running: Mapping[str, int]) -> Iterator[Q]:
    """The queued jobs in the order they are considered for launch (see the module). Each job taken counts as one
    more running job of its project for the jobs after it."""
    by_project: dict[str, deque[Q]] = {}
    for job in sorted(queued, key=lambda j: (-(j.priority or 0), j.pk)):
        by_project.setdefault(job.project_id, deque()).append(job)
    heap = [(running.get(p, 0), q[0].pk, p) for p, q in by_project.items()]
    heapq.heapify(heap)
    while heap:
        taken, _, project = heapq.heappop(heap)
        q = by_project[project]
        yield q.popleft()
        if q:
            heapq.heappush(heap, (taken + 1, q[0].pk, project))


def running_by_project(s: Session) -> dict[str, int]:
    rows = s.execute(
        select(Job.project_id, func.count()).where(Job.status == JobStatus.running).group_by(Job.project_id)
    )
    return {project: int(n) for project, n in rows}


def queued_jobs():  # type: ignore[no-untyped-def]
    """The queued jobs the scheduler may launch (a job resumed while its paused run still saves its state waits
    until that run is reaped)."""
    return select(Job).where(Job.status == JobStatus.queued, Job.run_handle.is_(None))


def queue_positions(s: Session) -> dict[str, int]:
    """Every launchable queued job's place in the fair queue, 1 for the next one considered."""
    rows = s.execute(
        select(Job.id, Job.pk, Job.project_id, Job.priority).where(
            Job.status == JobStatus.queued, Job.run_handle.is_(None)
        )
    ).all()
    return {row.id: n for n, row in enumerate(fair_order(rows, running_by_project(s)), start=1)}
