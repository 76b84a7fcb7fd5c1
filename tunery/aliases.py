"""Model aliases' writes, the one home of what a version is (api/services/aliases.py serves them; the scheduler
promotes a job's model to one: ``tunery.eval.promote_to_alias``, docs/evals.md).

An alias's ``version`` counts its versions and is its row's optimistic lock; each version is a row of its history
(who, when, from, to, why) and an event of the audit log.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery import audit, ids
from tunery.audit import Actor, EventType
from tunery.db import ModelAlias, ModelAliasVersion
from tunery.db.ops import now

ACTIONS = {
    "created": EventType.MODEL_ALIAS_CREATED,
    "updated": EventType.MODEL_ALIAS_UPDATED,
    "rolled_back": EventType.MODEL_ALIAS_ROLLED_BACK,
}


def find_alias(s: Session, organization_id: str, project_id: str, name: str) -> ModelAlias | None:
    """The project's alias called ``name``; another project's is never found."""
    return s.scalar(
        select(ModelAlias).where(
            ModelAlias.organization_id == organization_id,
            ModelAlias.project_id == project_id,
            ModelAlias.name == name,
        )
    )


def create_alias(
    s: Session, actor: Actor, organization_id: str, project_id: str, name: str, model: str, note: str | None
) -> ModelAlias:
    """A new alias (its version 1). The caller checks the name is free and the model usable."""
    at = now()
    alias = ModelAlias(
        id=ids.alias_id(),
        organization_id=organization_id,
        project_id=project_id,
        name=name,
        model=model,
        created_at=at,
        updated_at=at,
    )
    s.add(alias)
    s.flush()  # its version (1) is the mapper's
    record_version(s, actor, alias, "created", None, note)
    return alias


def repoint(
    s: Session,
    actor: Actor,
    alias: ModelAlias,
    model: str,
    action: str,
    note: str | None,
    to_version: int | None = None,
) -> None:
    """Point ``alias`` at ``model`` from the next request on: a new version."""
    previous = alias.model
    alias.model = model
    alias.updated_at = now()
    s.flush()  # the mapper adds one to `version`, or raises StaleDataError if another request did (retried)
    record_version(s, actor, alias, action, previous, note, to_version=to_version)


def point_alias(
    s: Session, actor: Actor, organization_id: str, project_id: str, name: str, model: str, note: str | None
) -> ModelAlias:
    """Create the alias, or re-point it (nothing when it already points at ``model``)."""
    alias = find_alias(s, organization_id, project_id, name)
    if alias is None:
        return create_alias(s, actor, organization_id, project_id, name, model, note)
    if alias.model != model:
        repoint(s, actor, alias, model, "updated", note)
    return alias


def record_version(
    s: Session,
    actor: Actor,
    alias: ModelAlias,
    action: str,
    previous: str | None,
    note: str | None,
    to_version: int | None = None,
) -> None:
    """The alias's current version as a row of its history, and as an event of the audit log."""
    s.add(
        ModelAliasVersion(
            id=ids.alias_version_id(),
            alias_id=alias.id,
            version=alias.version,
            action=action,
            from_model=previous,
            to_model=alias.model,
            actor_type=actor.type,
            actor_id=actor.id,
            actor_service_account_id=actor.service_account_id,
            created_at=alias.updated_at,
            note=note,
        )
    )
    data: dict[str, Any] = {
        "name": alias.name,
        "model": alias.model,
        "previous_model": previous,
        "version": alias.version,
    }
    if to_version is not None:
        data["to_version"] = to_version
    audit.record(
        s,
        ACTIONS[action],
        actor,
        organization_id=alias.organization_id,
        project_id=alias.project_id,
        resource_id=alias.id,
        details={"data": data},
    )
