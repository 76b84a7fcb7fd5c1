"""What fine-tuned models a project may use: its own, and those another project of its organization shared with it
(a checkpoint permission, OpenAI's ``checkpoint.permission``). The one rule, called wherever a model name is
resolved for a project: chat and completions, job creation and the dry run (fine-tuning from it), and the scheduler
when it launches such a job.

A permission names one model: sharing an ``ft:`` model shares that model, and sharing a checkpoint model
(``ft:...:ckpt-step-N``) that checkpoint. A grantee may use it, not delete it or share it on. Deleting the
permission takes the access away at the next request; deleting the model deletes its permissions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import BindParameter, ColumnElement, exists, or_, select
from sqlalchemy.orm import Session

from tunery.aliases import find_alias
from tunery.db import CheckpointPermission, FineTunedModel


def usable_by(organization_id: str | BindParameter[str], project_id: str | BindParameter[str]) -> ColumnElement[bool]:
    """The condition a fine-tuned model row meets when the project may use it: its own, or shared with it (the
    tenant may be bound parameters, in a statement built once)."""
    shared = exists().where(
        CheckpointPermission.model_id == FineTunedModel.id,
        CheckpointPermission.grantee_project_id == project_id,
        CheckpointPermission.organization_id == organization_id,
    )
    return (FineTunedModel.organization_id == organization_id) & or_(FineTunedModel.project_id == project_id, shared)


def usable_model(s: Session, organization_id: str, project_id: str, model: str) -> FineTunedModel | None:
    """The fine-tuned or checkpoint model named ``model`` if the project may use it, else None."""
    return s.scalar(select(FineTunedModel).where(FineTunedModel.id == model, usable_by(organization_id, project_id)))


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name runs: a base model of this server, or a fine-tuned model on one of them."""

    id: str  # the model that runs: the base model's name, or the ft: model (an alias's target)
    base_name: str
    base_path: str
    adapter_prefix: str | None  # the fine-tuned model's files in the object store; None for a base model


def usable_named(s: Session, organization_id: str, project_id: str, model: str) -> FineTunedModel | None:
    """The fine-tuned model ``model`` names for a project, if it may use it: the model by its name, or by one of the
    project's aliases (an alias whose model the project may no longer use is not found, as that model would be)."""
    row = usable_model(s, organization_id, project_id, model)  # its own, or shared with it
    if row is None and not model.startswith("ft:"):  # an alias's name never does (api/services/aliases.py)
        alias = find_alias(s, organization_id, project_id, model)
        if alias is not None:
            row = usable_model(s, organization_id, project_id, alias.model)  # the same rule as by its name
    return row


def resolve_usable(
    s: Session, organization_id: str, project_id: str, model: str, bases: Mapping[str, str]
) -> ResolvedModel | None:
    """What ``model`` names for a project, or None: a base model of this server (``bases``: name -> folder), or a
    fine-tuned model the project may use (:func:`usable_named`) whose base model it serves. The one rule of chat
    (api/services/models.py) and of a grader's judge, at job creation and when the scheduler launches its run."""
    if model in bases:
        return ResolvedModel(model, model, bases[model], None)
    row = usable_named(s, organization_id, project_id, model)
    if row is None or row.base_model not in bases:
        return None
    return ResolvedModel(row.id, row.base_model, bases[row.base_model], row.object_prefix)


def delete_permissions(s: Session, model: str) -> None:
    """A deleted model's permissions go with it."""
    for p in s.scalars(select(CheckpointPermission).where(CheckpointPermission.model_id == model)):
        s.delete(p)
