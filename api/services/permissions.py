"""Checkpoint permissions: a project's owner (or the organization's admin) shares one of the project's fine-tuned or
checkpoint models with other projects of the organization, lists and deletes the permissions. What a permission lets
the grantee do is decided in one place, tunery/sharing.py."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Principal
from api.context import AppContext
from api.errors import InvalidRequest, NotFound
from api.pagination import page
from api.protocol.permissions import (
    CheckpointPermission,
    CheckpointPermissionDeleted,
    CheckpointPermissionList,
    CreateCheckpointPermissionRequest,
    ListCheckpointPermissionsRequest,
)
from api.services.models import model_not_found
from tunery import audit, ids
from tunery.audit import EventType
from tunery.db import CheckpointPermission as Permission
from tunery.db import FineTunedModel, Project
from tunery.db.ops import now


def permission_object(p: Permission) -> CheckpointPermission:
    return CheckpointPermission(id=p.id, created_at=p.created_at, project_id=p.grantee_project_id)


class PermissionService:
    """The permissions of the models the caller may share: its project's (an owner), any project's of its
    organization (the admin)."""

    def __init__(self, ctx: AppContext, principal: Principal):
        self.ctx = ctx
        self.principal = principal

    def _model(self, s: Session, model: str) -> FineTunedModel:
        """The model, if the caller may share it; another project's is a 404, as one that never existed."""
        p = self.principal
        q = select(FineTunedModel).where(
            FineTunedModel.id == model, FineTunedModel.organization_id == p.organization_id
        )
        if p.project_id is not None:
            q = q.where(FineTunedModel.project_id == p.project_id)
        row = s.scalar(q)
        if row is None:
            raise model_not_found(model)
        return row

    def create(self, model: str, req: CreateCheckpointPermissionRequest) -> CheckpointPermissionList:
        """Share ``model`` with each project of ``project_ids`` (a project it is already shared with keeps its
        permission): the permissions, one per project, in the order asked."""
        with self.ctx.db.session() as s:
            row = self._model(s, model)
            wanted = list(dict.fromkeys(req.project_ids))
            live = {
                p.id
                for p in s.scalars(
                    select(Project).where(
                        Project.id.in_(wanted),
                        Project.organization_id == row.organization_id,
                        Project.archived_at.is_(None),
                    )
                )
            }
            unknown = [p for p in wanted if p not in live]
            if unknown:
                raise InvalidRequest(
                    f"No project {unknown[0]!r} in this organization (or it is archived).",
                    param="project_ids",
                    code="project_not_found",
                )
            if row.project_id in wanted:
                raise InvalidRequest(
                    f"The model already belongs to project {row.project_id}.", param="project_ids", code="invalid_value"
                )
            existing = {
                p.grantee_project_id: p
                for p in s.scalars(
                    select(Permission).where(Permission.model_id == model, Permission.grantee_project_id.in_(wanted))
                )
            }
            made: list[Permission] = []
            for project in wanted:
                permission = existing.get(project)
                if permission is None:
                    permission = Permission(
                        id=ids.checkpoint_permission_id(),
                        organization_id=row.organization_id,
                        project_id=row.project_id,
                        model_id=model,
                        grantee_project_id=project,
                        created_at=now(),
                    )
                    s.add(permission)
                    audit.record(
                        s,
                        EventType.CHECKPOINT_PERMISSION_CREATED,
                        self.principal.actor,
                        organization_id=row.organization_id,
                        project_id=row.project_id,
                        resource_id=permission.id,
                        details={"data": {"fine_tuned_model_checkpoint": model, "project_id": project}},
                    )
                made.append(permission)
            s.flush()
            return CheckpointPermissionList.of([permission_object(p) for p in made], False)

    def list(self, model: str, req: ListCheckpointPermissionsRequest) -> CheckpointPermissionList:
        with self.ctx.db.session() as s:
            self._model(s, model)
            q = select(Permission).where(Permission.model_id == model)
            if req.project_id:
                q = q.where(Permission.grantee_project_id == req.project_id)
            rows, more = page(
                s, Permission, q, after=req.after, limit=req.limit, newest_first=req.order == "descending"
            )
            return CheckpointPermissionList.of([permission_object(p) for p in rows], more)

    def delete(self, model: str, permission_id: str) -> CheckpointPermissionDeleted:
        """The grantee loses access at its next request."""
        with self.ctx.db.session() as s:
            self._model(s, model)
            permission = s.scalar(
                select(Permission).where(Permission.id == permission_id, Permission.model_id == model)
            )
            if permission is None:
                raise NotFound(
                    f"No permission {permission_id!r} of model {model!r}.", param="permission_id", code="not_found"
                )
            s.delete(permission)
            audit.record(
                s,
                EventType.CHECKPOINT_PERMISSION_DELETED,
                self.principal.actor,
                organization_id=permission.organization_id,
                project_id=permission.project_id,
                resource_id=permission_id,
                details={"data": {"fine_tuned_model_checkpoint": model, "project_id": permission.grantee_project_id}},
            )
            return CheckpointPermissionDeleted(id=permission_id, deleted=True)
