"""The audit log: who created, cancelled, deleted or shared what, and when, kept per organization (docs/tenancy.md).

One function, :func:`record`, called by the services (api/services/*.py) and by tunery/tenancy.py (which the API and
``tunery admin`` both go through) in the transaction of the change itself: an event is stored exactly when its change
is. The caller passes who acts as an :class:`Actor`, a plain value any transport builds from its own notion of the
caller (api/auth.py's ``Principal.actor`` for HTTP), so a gRPC API gets the same log for free.

An event's ``details`` are small and never secret: never a key's value or its hash, never a file's content.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy.orm import Session

from tunery import ids
from tunery.db.models import AuditEvent
from tunery.db.ops import now


class EventType(StrEnum):
    """What happened. OpenAI's names where OpenAI's audit log has the event (``project.created``,
    ``api_key.deleted``, ``checkpoint.permission.created``, ...); Tunery's own for the fine-tuning objects
    (``file.created``, ``fine_tuning.job.cancelled``, ...)."""

    FILE_CREATED = "file.created"
    FILE_DELETED = "file.deleted"
    UPLOAD_CREATED = "upload.created"
    UPLOAD_COMPLETED = "upload.completed"
    UPLOAD_CANCELLED = "upload.cancelled"
    JOB_CREATED = "fine_tuning.job.created"
    JOB_CANCELLED = "fine_tuning.job.cancelled"
    JOB_PAUSED = "fine_tuning.job.paused"
    JOB_RESUMED = "fine_tuning.job.resumed"
    EVALUATION_CREATED = "tunery.evaluation.created"
    EVALUATION_CANCELLED = "tunery.evaluation.cancelled"
    EXPORT_CREATED = "tunery.export.created"
    EXPORT_CANCELLED = "tunery.export.cancelled"
    MODEL_DELETED = "model.deleted"
    MODEL_DOWNLOADED = "model.downloaded"
    CHECKPOINT_PERMISSION_CREATED = "checkpoint.permission.created"
    CHECKPOINT_PERMISSION_DELETED = "checkpoint.permission.deleted"
    MODEL_ALIAS_CREATED = "model_alias.created"
    MODEL_ALIAS_UPDATED = "model_alias.updated"
    MODEL_ALIAS_ROLLED_BACK = "model_alias.rolled_back"
    MODEL_ALIAS_DELETED = "model_alias.deleted"
    PROJECT_CREATED = "project.created"
    PROJECT_UPDATED = "project.updated"
    PROJECT_ARCHIVED = "project.archived"
    SERVICE_ACCOUNT_CREATED = "service_account.created"
    SERVICE_ACCOUNT_UPDATED = "service_account.updated"
    SERVICE_ACCOUNT_DELETED = "service_account.deleted"
    API_KEY_CREATED = "api_key.created"
    API_KEY_DELETED = "api_key.deleted"
    SECRET_SET = "tunery.secret.set"
    SECRET_DELETED = "tunery.secret.deleted"


ActorType = Literal["api_key", "open_access", "cli", "job"]
BOOTSTRAP_KEY_ID = "bootstrap"


@dataclass(frozen=True)
class Actor:
    """Who acted. ``api_key``: a stored key (``id`` is its ``key_…`` id, ``service_account_id`` set for a project
    key, None for an admin key) or a ``TUNERY_API_KEYS`` key (``id`` ``bootstrap``: which of them is not known, and
    its value is never written down). ``open_access``: a request to a server without keys. ``cli``: ``tunery admin``
    on a machine that reaches the metadata store. ``job``: a job that acted on its own once it ended (``id`` its
    ``ftjob-…`` id: its model promoted to an alias, ``tunery.eval.promote_to_alias``)."""

    type: ActorType
    id: str
    service_account_id: str | None = None

    @staticmethod
    def key(key_id: str, service_account_id: str | None) -> Actor:
        return Actor("api_key", key_id, service_account_id)


BOOTSTRAP = Actor("api_key", BOOTSTRAP_KEY_ID)
OPEN_ACCESS = Actor("open_access", "open_access")
CLI = Actor("cli", "cli")


def record(
    s: Session,
    type: EventType,
    actor: Actor,
    *,
    organization_id: str,
    project_id: str | None,
    resource_id: str,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the session's transaction: it is stored if, and only if, the change it tells of is."""
    row = AuditEvent(
        id=ids.audit_event_id(),
        organization_id=organization_id,
        project_id=project_id,
        type=str(type),
        effective_at=now(),
        actor_type=actor.type,
        actor_id=actor.id,
        actor_service_account_id=actor.service_account_id,
        resource_id=resource_id,
        details=details or {},
    )
    s.add(row)
    return row
