"""The administration API: an organization's projects, their service accounts and API keys, and its admin keys.

Every lookup is within the caller's organization; an id of another organization's object is a 404. A key's value is
returned once, by the call that makes it; lists and lookups show its ``redacted_value``. Deleting a key revokes it
(its next request is a 401); deleting a service account revokes its key. Who may call what is api/auth.py's rule
(``authorize``): an admin key, or a project's owner for its own project's service accounts and keys.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext
from api.errors import InvalidRequest, NotFound
from api.pagination import page
from api.protocol.organization import (
    AdminApiKey,
    AdminApiKeyCreate,
    AdminApiKeyDeleted,
    AdminApiKeyList,
    AdminKeyOwner,
    KeyOwnerServiceAccount,
    Project,
    ProjectApiKey,
    ProjectApiKeyDeleted,
    ProjectApiKeyList,
    ProjectApiKeyOwner,
    ProjectCreate,
    ProjectLimits,
    ProjectList,
    ProjectTunery,
    ProjectTuneryUpdate,
    ProjectUpdate,
    ServiceAccount,
    ServiceAccountApiKey,
    ServiceAccountCreate,
    ServiceAccountCreated,
    ServiceAccountDeleted,
    ServiceAccountList,
    ServiceAccountUpdate,
)
from tunery import db, quotas, tenancy
from tunery.audit import Actor, EventType, record
from tunery.db.models import ADMIN_ROLE
from tunery.db.ops import now
from tunery.settings import Settings


def project_object(p: db.Project, settings: Settings) -> Project:
    limits = ProjectLimits.model_validate(quotas.ProjectLimits.of(p, settings).__dict__)
    return Project(
        id=p.id,
        name=p.name,
        created_at=p.created_at,
        archived_at=p.archived_at,
        status="archived" if p.archived_at is not None else "active",
        tunery=ProjectTunery(limits=limits),
    )


def set_limits(p: db.Project, update: ProjectTuneryUpdate | None) -> None:
    """The project's own limits as ``tunery.limits`` sets them: the fields sent, a null one back to the default."""
    limits = update.limits if update is not None else None
    if limits is None:
        return
    for name in limits.model_fields_set:
        setattr(p, name, getattr(limits, name))


def service_account_object(a: db.ServiceAccount) -> ServiceAccount:
    return ServiceAccount(id=a.id, name=a.name, role=a.role, created_at=a.created_at)


def project_key_object(k: db.ApiKey, a: db.ServiceAccount) -> ProjectApiKey:
    owner = KeyOwnerServiceAccount(id=a.id, name=a.name, role=a.role, created_at=a.created_at)
    return ProjectApiKey(
        id=k.id,
        name=k.name,
        redacted_value=k.redacted_value,
        created_at=k.created_at,
        last_used_at=k.last_used_at,
        expires_at=k.expires_at,
        owner=ProjectApiKeyOwner(service_account=owner),
    )


def admin_key_object(k: db.ApiKey, value: str | None = None) -> AdminApiKey:
    return AdminApiKey(
        id=k.id,
        name=k.name,
        redacted_value=k.redacted_value,
        value=value,
        created_at=k.created_at,
        last_used_at=k.last_used_at,
        expires_at=k.expires_at,
        owner=AdminKeyOwner(id=k.organization_id),
    )


def _expiry(seconds: int | None) -> int | None:
    return None if seconds is None else now() + seconds


class OrganizationService:
    """The administration API of one organization. Every method blocks (database): run them off the event loop.
    Every change is recorded in the audit log (tunery/audit.py) as done by ``actor``, in its own transaction."""

    def __init__(self, ctx: AppContext, organization_id: str, actor: Actor):
        self.ctx = ctx
        self.org = organization_id
        self.actor = actor

    def _record(
        self, s: Session, type: EventType, project_id: str | None, resource_id: str, details: dict[str, Any]
    ) -> None:
        record(
            s,
            type,
            self.actor,
            organization_id=self.org,
            project_id=project_id,
            resource_id=resource_id,
            details=details,
        )

    # Projects ----------------------------------------------------------------------------------------------------
    def _project(self, s: Session, project_id: str, *, active: bool = False) -> db.Project:
        row = s.scalar(select(db.Project).where(db.Project.id == project_id, db.Project.organization_id == self.org))
        if row is None:
            raise NotFound(f"No project found with id '{project_id}'.", param="project_id")
        if active and row.archived_at is not None:
            raise InvalidRequest(f"The project '{project_id}' is archived.", param="project_id")
        return row

    def list_projects(self, *, after: str | None, limit: int, include_archived: bool) -> ProjectList:
        with self.ctx.db.session() as s:
            q = select(db.Project).where(db.Project.organization_id == self.org)
            if not include_archived:
                q = q.where(db.Project.archived_at.is_(None))
            rows, more = page(s, db.Project, q, after=after, limit=limit, newest_first=False)
            return ProjectList.of([project_object(p, self.ctx.settings) for p in rows], more)

    def create_project(self, req: ProjectCreate) -> Project:
        with self.ctx.db.session() as s:
            row = tenancy.create_project(s, self.actor, self.org, req.name)
            set_limits(row, req.tunery)
            return project_object(row, self.ctx.settings)

    def retrieve_project(self, project_id: str) -> Project:
        with self.ctx.db.session() as s:
            return project_object(self._project(s, project_id), self.ctx.settings)

    def modify_project(self, project_id: str, req: ProjectUpdate) -> Project:
        """A new name, or new limits (``tunery.limits``: they hold from the next request, upload or launch on)."""
        with self.ctx.db.session() as s:
            row = self._project(s, project_id, active=True)
            if req.name is not None:
                row.name = req.name
            set_limits(row, req.tunery)
            changes = req.model_dump(mode="json", exclude_unset=True)
            self._record(s, EventType.PROJECT_UPDATED, row.id, row.id, {"changes_requested": changes})
            return project_object(row, self.ctx.settings)

    def archive_project(self, project_id: str) -> Project:
        """An archived project's keys stop working at once; its objects stay (nothing can reach them)."""
        if project_id == self.ctx.settings.project_id:
            raise InvalidRequest("The default project cannot be archived.", param="project_id")
        with self.ctx.db.session() as s:
            row = self._project(s, project_id)
            if row.archived_at is None:
                row.archived_at = now()
                self._record(s, EventType.PROJECT_ARCHIVED, row.id, row.id, {})
            return project_object(row, self.ctx.settings)

    # Service accounts --------------------------------------------------------------------------------------------
    def _account(self, s: Session, project_id: str, account_id: str) -> db.ServiceAccount:
        self._project(s, project_id)
        row = s.scalar(
            select(db.ServiceAccount).where(
                db.ServiceAccount.id == account_id,
                db.ServiceAccount.project_id == project_id,
                db.ServiceAccount.organization_id == self.org,
            )
        )
        if row is None:
            raise NotFound(f"No service account found with id '{account_id}'.", param="service_account_id")
        return row

    def list_service_accounts(self, project_id: str, *, after: str | None, limit: int) -> ServiceAccountList:
        with self.ctx.db.session() as s:
            self._project(s, project_id)
            q = select(db.ServiceAccount).where(
                db.ServiceAccount.organization_id == self.org, db.ServiceAccount.project_id == project_id
            )
            rows, more = page(s, db.ServiceAccount, q, after=after, limit=limit, newest_first=False)
            return ServiceAccountList.of([service_account_object(a) for a in rows], more)

    def create_service_account(self, project_id: str, req: ServiceAccountCreate) -> ServiceAccountCreated:
        with self.ctx.db.session() as s:
            project = self._project(s, project_id, active=True)
            account, key = tenancy.create_service_account(
                s, self.actor, project, name=req.name, role=req.role, expires_at=_expiry(req.expires_in_seconds)
            )
            s.flush()
            created = ServiceAccountCreated(
                **service_account_object(account).model_dump(),
                api_key=ServiceAccountApiKey(
                    id=key.row.id,
                    name=key.row.name,
                    value=key.value,
                    created_at=key.row.created_at,
                    expires_at=key.row.expires_at,
                ),
            )
        self._issued()
        return created

    def retrieve_service_account(self, project_id: str, account_id: str) -> ServiceAccount:
        with self.ctx.db.session() as s:
            return service_account_object(self._account(s, project_id, account_id))

    def modify_service_account(self, project_id: str, account_id: str, req: ServiceAccountUpdate) -> ServiceAccount:
        with self.ctx.db.session() as s:
            account = self._account(s, project_id, account_id)
            if req.name is not None:
                account.name = req.name
            if req.role is not None:
                account.role = req.role
                keys = tenancy.live_keys(self.org, project_id).where(db.ApiKey.service_account_id == account.id)
                for key in s.scalars(keys):
                    key.role = req.role
            changes = req.model_dump(include={"name", "role"}, exclude_none=True)
            self._record(s, EventType.SERVICE_ACCOUNT_UPDATED, project_id, account.id, {"changes_requested": changes})
            return service_account_object(account)

    def delete_service_account(self, project_id: str, account_id: str) -> ServiceAccountDeleted:
        with self.ctx.db.session() as s:
            account = self._account(s, project_id, account_id)
            for key in s.scalars(
                tenancy.live_keys(self.org, project_id).where(db.ApiKey.service_account_id == account.id)
            ):
                tenancy.revoke(s, self.actor, key)
            s.delete(account)
            self._record(s, EventType.SERVICE_ACCOUNT_DELETED, project_id, account_id, {})
        return ServiceAccountDeleted(id=account_id, deleted=True)

    # Project API keys --------------------------------------------------------------------------------------------
    def _project_keys(self, s: Session, project_id: str):  # type: ignore[no-untyped-def]
        self._project(s, project_id)
        return tenancy.live_keys(self.org, project_id).join(
            db.ServiceAccount, db.ServiceAccount.id == db.ApiKey.service_account_id
        )

    def _owner(self, s: Session, key: db.ApiKey) -> db.ServiceAccount:
        account = s.scalar(select(db.ServiceAccount).where(db.ServiceAccount.id == key.service_account_id))
        assert account is not None  # the listing joins them
        return account

    def _project_key(self, s: Session, project_id: str, key_id: str) -> db.ApiKey:
        row = s.scalar(self._project_keys(s, project_id).where(db.ApiKey.id == key_id))
        if row is None:
            raise NotFound(f"No API key found with id '{key_id}'.", param="key_id")
        return row

    def list_project_keys(self, project_id: str, *, after: str | None, limit: int) -> ProjectApiKeyList:
        with self.ctx.db.session() as s:
            rows, more = page(
                s, db.ApiKey, self._project_keys(s, project_id), after=after, limit=limit, newest_first=False
            )
            return ProjectApiKeyList.of([project_key_object(k, self._owner(s, k)) for k in rows], more)

    def retrieve_project_key(self, project_id: str, key_id: str) -> ProjectApiKey:
        with self.ctx.db.session() as s:
            key = self._project_key(s, project_id, key_id)
            return project_key_object(key, self._owner(s, key))

    def delete_project_key(self, project_id: str, key_id: str) -> ProjectApiKeyDeleted:
        with self.ctx.db.session() as s:
            tenancy.revoke(s, self.actor, self._project_key(s, project_id, key_id))
        return ProjectApiKeyDeleted(id=key_id, deleted=True)

    # Admin API keys ----------------------------------------------------------------------------------------------
    def _admin_key(self, s: Session, key_id: str) -> db.ApiKey:
        row = s.scalar(tenancy.live_keys(self.org, admin=True).where(db.ApiKey.id == key_id))
        if row is None:
            raise NotFound(f"No admin API key found with id '{key_id}'.", param="key_id")
        return row

    def list_admin_keys(self, *, after: str | None, limit: int, order: Literal["asc", "desc"]) -> AdminApiKeyList:
        with self.ctx.db.session() as s:
            q = tenancy.live_keys(self.org, admin=True)
            rows, more = page(s, db.ApiKey, q, after=after, limit=limit, newest_first=order == "desc")
            return AdminApiKeyList.of([admin_key_object(k) for k in rows], more)

    def create_admin_key(self, req: AdminApiKeyCreate) -> AdminApiKey:
        with self.ctx.db.session() as s:
            key = tenancy.issue_key(
                s,
                self.actor,
                organization_id=self.org,
                project_id=None,
                role=ADMIN_ROLE,
                name=req.name,
                expires_at=_expiry(req.expires_in_seconds),
            )
            s.flush()
            created = admin_key_object(key.row, key.value)
        self._issued()
        return created

    def retrieve_admin_key(self, key_id: str) -> AdminApiKey:
        with self.ctx.db.session() as s:
            return admin_key_object(self._admin_key(s, key_id))

    def delete_admin_key(self, key_id: str) -> AdminApiKeyDeleted:
        with self.ctx.db.session() as s:
            tenancy.revoke(s, self.actor, self._admin_key(s, key_id))
        return AdminApiKeyDeleted(id=key_id, deleted=True)

    def _issued(self) -> None:
        if self.ctx.keys is not None:
            self.ctx.keys.note_issued()
