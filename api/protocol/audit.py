"""The audit log (``GET /v1/organization/audit_logs``), as OpenAI's has it (the SDK's
``client.admin.organization.audit_logs``): an event's ``id``, ``type``, ``effective_at``, ``project``, ``actor``, and
its details under a key named after its type (``"project.created": {"id": ..., "data": {...}}``)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from api.protocol.base import CursorPage, OpenAIResponse, omitted


class AuditLogProject(OpenAIResponse):
    """The project the event was scoped to (absent for an organization-wide one, such as an admin key's)."""

    id: str
    name: str | None = omitted("The project's name now (absent if its row is gone).")


class AuditLogServiceAccount(OpenAIResponse):
    id: str


class AuditLogApiKey(OpenAIResponse):
    """The key that acted: a project key (``service_account``) or an admin key (``admin``; its ``id`` is
    ``bootstrap`` for a key of ``TUNERY_API_KEYS``)."""

    id: str
    type: Literal["service_account", "admin"]
    service_account: AuditLogServiceAccount | None = omitted()


class AuditLogActor(OpenAIResponse):
    """Who acted: an API key (OpenAI's ``api_key``), or Tunery's ``open_access`` (a server without keys) and
    ``cli`` (``tunery admin``)."""

    type: Literal["api_key", "open_access", "cli", "job"]
    api_key: AuditLogApiKey | None = omitted()


class AuditLog(OpenAIResponse):
    """OpenAI's ``AuditLog``. The event's details are one more field, named after its ``type``: they always hold
    the ``id`` of the object acted on, never a secret."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    effective_at: int
    project: AuditLogProject | None = omitted()
    actor: AuditLogActor


class AuditLogList(CursorPage[AuditLog]):
    """OpenAI's ``ListAuditLogsResponse``: newest first."""
