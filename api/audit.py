"""``GET /v1/organization/audit_logs`` over HTTP: the organization's audit log (api/services/audit.py lists it).

Only an admin key may call it (api/auth.py ``authorize``: the ``/v1/organization/`` prefix; this is no owner route).
The filters are spelled as the SDK sends them: ``event_types[]=…`` (repeated) and ``effective_at[gte]=…``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from api.auth import Principal, principal
from api.context import AppContext, get_ctx
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.audit import AuditLogList
from api.routing import API_PREFIX
from api.services.audit import AuditLogQuery, AuditLogService

router = APIRouter(prefix=f"{API_PREFIX}/organization", responses=ERROR_RESPONSES)


def _ids(name: str, description: str) -> list[str]:
    return Query([], alias=f"{name}[]", description=description)  # type: ignore[no-any-return]


def _bound(op: str) -> int | None:
    return Query(None, alias=f"effective_at[{op}]", description=f"Only events whose effective_at is {op} this.")  # type: ignore[no-any-return]


@router.get("/audit_logs")
def list_audit_logs(
    event_types: list[str] = _ids("event_types", "Only events of these types."),
    project_ids: list[str] = _ids("project_ids", "Only events of these projects."),
    actor_ids: list[str] = _ids("actor_ids", "Only events of these keys or service accounts."),
    resource_ids: list[str] = _ids("resource_ids", "Only events on these objects."),
    actor_emails: list[str] = _ids("actor_emails", "Tunery has no users: no event matches."),
    gt: int | None = _bound("gt"),
    gte: int | None = _bound("gte"),
    lt: int | None = _bound("lt"),
    lte: int | None = _bound("lte"),
    after: str | None = None,
    before: str | None = None,
    limit: int = limit_param(20),
    ctx: AppContext = Depends(get_ctx),
    p: Principal = Depends(principal),
) -> AuditLogList:
    query = AuditLogQuery(
        event_types=tuple(event_types),
        project_ids=tuple(project_ids),
        actor_ids=tuple(actor_ids),
        resource_ids=tuple(resource_ids),
        actor_emails=tuple(actor_emails),
        effective_at_gt=gt,
        effective_at_gte=gte,
        effective_at_lt=lt,
        effective_at_lte=lte,
        after=after,
        before=before,
        limit=limit,
    )
    return AuditLogService(ctx.db, p.organization_id).list(query)
