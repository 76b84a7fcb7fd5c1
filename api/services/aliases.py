"""Model aliases: a project's stable name (``support-bot``) for one of the fine-tuned or checkpoint models it may use
(its own or shared with it: tunery/sharing.py), re-pointed in one call and rolled back in one call, every version
kept with who made it, when, from which model to which, and why (docs/aliases.md).

A request naming an alias is served by its current model: api/services/models.py ``resolve_model`` resolves it, the
one place a model name is resolved for serving. Blocking (the metadata store): run the calls off the event loop.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, NotFound
from api.pagination import page
from api.protocol.aliases import (
    Alias,
    AliasActor,
    AliasDeleted,
    AliasList,
    AliasVersion,
    AliasVersionList,
    CreateAliasRequest,
    ListAliasesRequest,
    ListAliasVersionsRequest,
    RollbackAliasRequest,
    UpdateAliasRequest,
)
from api.services.models import model_not_found, project_alias
from tunery import audit
from tunery.aliases import create_alias, repoint
from tunery.audit import Actor, EventType
from tunery.db import Checkpoint, FineTunedModel, Job, ModelAlias, ModelAliasVersion
from tunery.sharing import usable_model

# Lowercase letters, digits, '-', '_', '.'; 1 to 64 characters, the first a letter or a digit (so never `.` or `..`,
# which a URL path would swallow). No ':', so never an `ft:` name.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_RULE = (
    "1 to 64 lowercase letters, digits, '-', '_' or '.', starting with a letter or a digit, and not the name of a "
    "model of this server"
)


def alias_not_found(name: str) -> NotFound:
    return NotFound(f"No alias `{name}` in this project.", param="name", code="alias_not_found")


def check_name(name: str, base_models: set[str] | dict[str, Any]) -> None:
    """The rule of an alias's name (see :data:`NAME_RULE`): a 400 naming ``name`` otherwise."""
    if name.startswith("ft:"):
        raise InvalidRequest(
            f"Invalid alias name `{name}`: `ft:` names are fine-tuned models; an alias is {NAME_RULE}.",
            param="name",
            code="invalid_alias_name",
        )
    if not NAME.fullmatch(name):
        raise InvalidRequest(
            f"Invalid alias name `{name}`: an alias is {NAME_RULE}.", param="name", code="invalid_alias_name"
        )
    if name in base_models:
        raise InvalidRequest(
            f"Invalid alias name `{name}`: it is a base model of this server; an alias is {NAME_RULE}.",
            param="name",
            code="invalid_alias_name",
        )


def alias_object(a: ModelAlias) -> Alias:
    return Alias(
        id=a.id,
        name=a.name,
        model=a.model,
        version=a.version,
        created_at=a.created_at,
        updated_at=a.updated_at,
    )


def version_object(v: ModelAliasVersion, name: str, eval_report: dict[str, Any] | None) -> AliasVersion:
    return AliasVersion(
        id=v.id,
        alias=name,
        version=v.version,
        action=v.action,  # type: ignore[arg-type]  # what _record writes
        model=v.to_model,
        previous_model=v.from_model,
        actor=AliasActor(type=v.actor_type, id=v.actor_id, service_account_id=v.actor_service_account_id),
        created_at=v.created_at,
        note=v.note,
        eval_report=eval_report,
    )


class AliasService:
    """The caller's project's aliases. Who may call what is api/auth.py's rule (readers read; members, owners and
    the admin write); ``actor`` is who the versions and the audit log say acted."""

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor

    # ---- reads ----------------------------------------------------------------------------------------------------
    def list(self, req: ListAliasesRequest) -> AliasList:
        t = self.tenant
        with self.ctx.db.session() as s:
            q = select(ModelAlias).where(
                ModelAlias.organization_id == t.organization_id, ModelAlias.project_id == t.project_id
            )
            rows, more = page(s, ModelAlias, q, after=req.after, limit=req.limit)
            return AliasList.of([alias_object(a) for a in rows], more)

    def retrieve(self, name: str) -> Alias:
        with self.ctx.db.session() as s:
            return alias_object(self._alias(s, name))

    def history(self, name: str, req: ListAliasVersionsRequest) -> AliasVersionList:
        """Every version, newest first, each with its model's eval report when it has one."""
        with self.ctx.db.session() as s:
            alias = self._alias(s, name)
            q = select(ModelAliasVersion).where(ModelAliasVersion.alias_id == alias.id)
            rows, more = page(s, ModelAliasVersion, q, after=req.after, limit=req.limit)
            reports = {m: self._eval_report(s, m) for m in {v.to_model for v in rows}}
            return AliasVersionList.of([version_object(v, alias.name, reports[v.to_model]) for v in rows], more)

    # ---- writes ---------------------------------------------------------------------------------------------------
    def create(self, req: CreateAliasRequest) -> Alias:
        check_name(req.name, self.ctx.settings.base_model_paths())

        def work(s: Session) -> Alias:
            t = self.tenant
            self._target(s, req.model)
            if project_alias(s, t, req.name) is not None:
                raise self._exists(req.name)
            alias = create_alias(s, self.actor, t.organization_id, t.project_id, req.name, req.model, req.note)
            return alias_object(alias)

        try:
            return self.ctx.db.transaction(work)
        except IntegrityError:  # the same name, created at the same moment by another request
            raise self._exists(req.name) from None

    def update(self, name: str, req: UpdateAliasRequest) -> Alias:
        """Point the alias at ``req.model`` from the next request on: a new version. The model it points at already
        changes nothing (no version)."""

        def work(s: Session) -> Alias:
            alias = self._alias(s, name)
            self._target(s, req.model)
            if req.model != alias.model:
                repoint(s, self.actor, alias, req.model, "updated", req.note)
            return alias_object(alias)

        return self.ctx.db.transaction(work)

    def rollback(self, name: str, req: RollbackAliasRequest) -> Alias:
        """Point the alias again at the model it pointed at before its current version (``previous_model``), or at
        the model of version ``req.to_version``: a new version, as a re-point is. Rolling back twice returns to where
        it started (as ``helm rollback`` and ``kubectl rollout undo`` do)."""

        def work(s: Session) -> Alias:
            alias = self._alias(s, name)
            if req.to_version is None:
                current = self._version(s, alias, alias.version)
                target = current.from_model if current is not None else None
                if target is None:
                    raise InvalidRequest(
                        f"The alias `{name}` has never pointed at another model: there is nothing to roll back to.",
                        param="to_version",
                        code="no_previous_version",
                    )
            else:
                chosen = self._version(s, alias, req.to_version)
                if chosen is None:
                    raise InvalidRequest(
                        f"The alias `{name}` has no version {req.to_version} (its versions are 1 to {alias.version}).",
                        param="to_version",
                        code="invalid_value",
                    )
                target = chosen.to_model
                if target == alias.model:
                    raise InvalidRequest(
                        f"The alias `{name}` already points at `{target}`, the model of version {req.to_version}.",
                        param="to_version",
                        code="invalid_value",
                    )
            self._target(s, target)  # a model the project may no longer use is a 404, as for a re-point
            repoint(s, self.actor, alias, target, "rolled_back", req.note, to_version=req.to_version)
            return alias_object(alias)

        return self.ctx.db.transaction(work)

    def delete(self, name: str) -> AliasDeleted:
        """The alias and its versions are gone; from the next request on its name is not found."""
        with self.ctx.db.session() as s:
            alias = self._alias(s, name)
            s.execute(delete(ModelAliasVersion).where(ModelAliasVersion.alias_id == alias.id))
            s.delete(alias)
            audit.record(
                s,
                EventType.MODEL_ALIAS_DELETED,
                self.actor,
                organization_id=alias.organization_id,
                project_id=alias.project_id,
                resource_id=alias.id,
                details={"data": {"name": alias.name, "model": alias.model, "version": alias.version}},
            )
            return AliasDeleted(id=alias.id, name=alias.name, deleted=True)

    # ---- helpers --------------------------------------------------------------------------------------------------
    def _alias(self, s: Session, name: str) -> ModelAlias:
        alias = project_alias(s, self.tenant, name)
        if alias is None:
            raise alias_not_found(name)
        return alias

    @staticmethod
    def _exists(name: str) -> InvalidRequest:
        return InvalidRequest(
            f"The alias `{name}` already exists in this project: re-point it with POST /v1/tunery/aliases/{name}.",
            param="name",
            code="alias_exists",
        )

    @staticmethod
    def _version(s: Session, alias: ModelAlias, n: int) -> ModelAliasVersion | None:
        return s.scalar(
            select(ModelAliasVersion).where(ModelAliasVersion.alias_id == alias.id, ModelAliasVersion.version == n)
        )

    def _target(self, s: Session, model: str) -> FineTunedModel:
        """The model an alias may point at: a fine-tuned or checkpoint model the project may use (tunery/sharing.py),
        else the 404 that model gets everywhere; a base model (or another alias) is not one."""
        if model in self.ctx.settings.base_model_paths():
            raise InvalidRequest(
                f"`{model}` is a base model: an alias points at a fine-tuned or checkpoint model.",
                param="model",
                code="invalid_value",
            )
        row = usable_model(s, self.tenant.organization_id, self.tenant.project_id, model)
        if row is None:
            raise model_not_found(model)
        return row

    def _eval_report(self, s: Session, model: str) -> dict[str, Any] | None:
        """The eval report stored with ``model`` (its checkpoint's, or its job's for a final model), passed through as
        stored; None when it has none, or when the project may no longer use the model."""
        row = usable_model(s, self.tenant.organization_id, self.tenant.project_id, model)
        if row is None:
            return None
        if row.kind == "checkpoint":
            report = s.scalar(
                select(Checkpoint.eval_report).where(
                    Checkpoint.job_id == row.job_id, Checkpoint.fine_tuned_model_checkpoint == model
                )
            )
        else:
            report = s.scalar(select(Job.eval_report).where(Job.id == row.job_id))
        return report
