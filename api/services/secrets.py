"""A project's secrets (docs/integrations.md): set, list (names only) and delete the values its jobs' integrations
read. tunery/integrations.py holds which names exist and which integration reads each; the scheduler hands a job's
trainer the values its integrations need (scheduler/dispatch.py), never the object store.

Who may call: the project's owner and the organization's admin (api/auth.py). No answer ever holds a value.
Blocking (the metadata store): run the calls off the event loop.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import NotFound
from api.protocol.secrets import ProjectSecret, ProjectSecretDeleted, ProjectSecretList
from tunery import audit
from tunery.audit import Actor, EventType
from tunery.db import ProjectSecret as SecretRow
from tunery.db.ops import now
from tunery.integrations import SecretName


def secret_object(row: SecretRow) -> ProjectSecret:
    return ProjectSecret(name=row.name, created_at=row.created_at, updated_at=row.updated_at)


class SecretService:
    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor  # who the audit log says acted (its events name the secret, never its value)

    def _record(self, s: Session, type: EventType, name: SecretName) -> None:
        t = self.tenant
        audit.record(
            s,
            type,
            self.actor,
            organization_id=t.organization_id,
            project_id=t.project_id,
            resource_id=name.value,
            details={"data": {"name": name.value}},
        )

    def _find(self, s: Session, name: SecretName) -> SecretRow | None:
        t = self.tenant
        return s.scalar(
            select(SecretRow).where(
                SecretRow.organization_id == t.organization_id,
                SecretRow.project_id == t.project_id,
                SecretRow.name == name.value,
            )
        )

    def list(self) -> ProjectSecretList:
        t = self.tenant
        with self.ctx.db.session() as s:
            rows = s.scalars(
                select(SecretRow)
                .where(SecretRow.organization_id == t.organization_id, SecretRow.project_id == t.project_id)
                .order_by(SecretRow.name)
            )
            return ProjectSecretList(data=[secret_object(r) for r in rows])

    def set(self, name: SecretName, value: str) -> ProjectSecret:
        """Set the project's secret ``name`` (a new one, or a new value of one it has)."""

        def apply(s: Session) -> ProjectSecret:
            at = now()
            row = self._find(s, name)
            if row is None:
                t = self.tenant
                row = SecretRow(
                    organization_id=t.organization_id,
                    project_id=t.project_id,
                    name=name.value,
                    value=value,
                    created_at=at,
                    updated_at=at,
                )
                s.add(row)
            else:
                row.value, row.updated_at = value, at
            self._record(s, EventType.SECRET_SET, name)
            s.flush()
            return secret_object(row)

        return self.ctx.db.transaction(apply)

    def delete(self, name: SecretName) -> ProjectSecretDeleted:
        def apply(s: Session) -> ProjectSecretDeleted:
            row = self._find(s, name)
            if row is None:
                raise NotFound(f"The project has no secret {name.value}.", param="name", code="secret_not_found")
            s.delete(row)
            self._record(s, EventType.SECRET_DELETED, name)
            return ProjectSecretDeleted(name=name.value, deleted=True)

        return self.ctx.db.transaction(apply)
