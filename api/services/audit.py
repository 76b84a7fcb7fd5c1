"""An organization's audit log, listed (tunery/audit.py records it): newest first, with OpenAI's filters and cursors.

Only the caller's organization's events, whatever the filters say; who may list them (an admin) is api/auth.py's
rule. ``api/audit.py`` serves it over HTTP and ``tunery admin audit`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from api.pagination import MAX_PAGE, page
from api.protocol.audit import (
    AuditLog,
    AuditLogActor,
    AuditLogApiKey,
    AuditLogList,
    AuditLogProject,
    AuditLogServiceAccount,
)
from tunery.db import AuditEvent, Database, Project


@dataclass(frozen=True)
class AuditLogQuery:
    """OpenAI's filters: each list, when given, keeps the events matching one of its values; ``effective_at``'s
    bounds (Unix seconds) all apply. ``actor_ids`` match a key id (``key_…``, or ``bootstrap``), a service account
    id, or ``open_access``/``cli``. ``after`` pages on to older events, ``before`` back to newer ones."""

    event_types: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()
    actor_ids: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    actor_emails: tuple[str, ...] = ()  # Tunery has no users: none matches
    effective_at_gt: int | None = None
    effective_at_gte: int | None = None
    effective_at_lt: int | None = None
    effective_at_lte: int | None = None
    after: str | None = None
    before: str | None = None
    limit: int = 20


def actor_object(e: AuditEvent) -> AuditLogActor:
    if e.actor_type != "api_key":
        return AuditLogActor(type=e.actor_type)  # type: ignore[arg-type]  # open_access, cli (what record() writes)
    account = e.actor_service_account_id
    key = AuditLogApiKey(
        id=e.actor_id,
        type="service_account" if account else "admin",
        service_account=AuditLogServiceAccount(id=account) if account else None,
    )
    return AuditLogActor(type="api_key", api_key=key)


def audit_log_object(e: AuditEvent, project_names: dict[str, str]) -> AuditLog:
    project = None
    if e.project_id is not None:
        project = AuditLogProject(id=e.project_id, name=project_names.get(e.project_id))
    details: dict[str, Any] = {**(e.details or {}), "id": e.resource_id}
    return AuditLog(
        id=e.id,
        type=e.type,
        effective_at=e.effective_at,
        project=project,
        actor=actor_object(e),
        **{e.type: details},
    )


class AuditLogService:
    """One organization's audit log. Blocking (database): run it off the event loop."""

    def __init__(self, db: Database, organization_id: str):
        self.db = db
        self.org = organization_id

    def _filtered(self, q: AuditLogQuery) -> Select[Any]:
        query = select(AuditEvent).where(AuditEvent.organization_id == self.org)
        if q.event_types:
            query = query.where(AuditEvent.type.in_(q.event_types))
        if q.project_ids:
            query = query.where(AuditEvent.project_id.in_(q.project_ids))
        if q.resource_ids:
            query = query.where(AuditEvent.resource_id.in_(q.resource_ids))
        if q.actor_ids:
            query = query.where(
                or_(AuditEvent.actor_id.in_(q.actor_ids), AuditEvent.actor_service_account_id.in_(q.actor_ids))
            )
        if q.effective_at_gt is not None:
            query = query.where(AuditEvent.effective_at > q.effective_at_gt)
        if q.effective_at_gte is not None:
            query = query.where(AuditEvent.effective_at >= q.effective_at_gte)
        if q.effective_at_lt is not None:
            query = query.where(AuditEvent.effective_at < q.effective_at_lt)
        if q.effective_at_lte is not None:
            query = query.where(AuditEvent.effective_at <= q.effective_at_lte)
        return query

    def _before(self, s: Session, query: Select[Any], before: str, limit: int) -> tuple[list[AuditEvent], bool]:
        """The ``limit`` events just newer than ``before``, newest first; has_more: whether newer ones remain."""
        cursor = s.scalar(select(AuditEvent.pk).where(AuditEvent.organization_id == self.org, AuditEvent.id == before))
        if cursor is None:
            return [], False
        rows = list(s.scalars(query.where(AuditEvent.pk > cursor).order_by(AuditEvent.pk.asc()).limit(limit + 1)))
        return rows[:limit][::-1], len(rows) > limit

    def list(self, q: AuditLogQuery) -> AuditLogList:
        if q.actor_emails:
            return AuditLogList.of([], False)
        limit = min(q.limit, MAX_PAGE)
        with self.db.session() as s:
            query = self._filtered(q)
            if q.before:
                rows, more = self._before(s, query, q.before, limit)
            else:
                # An `after` that the filters leave out still marks its place in the organization's log.
                everything = select(AuditEvent).where(AuditEvent.organization_id == self.org)
                rows, more = page(s, AuditEvent, query, after=q.after, limit=limit, cursors=everything)
            wanted = {e.project_id for e in rows if e.project_id is not None}
            names = {p.id: p.name for p in s.scalars(select(Project).where(Project.id.in_(wanted)))} if wanted else {}
            return AuditLogList.of([audit_log_object(e, names) for e in rows], more)
