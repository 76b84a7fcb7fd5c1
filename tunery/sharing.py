"""What fine-tuned models a project may use: its own, and those another project of its organization shared with it
(a checkpoint permission, OpenAI's ``checkpoint.permission``). The one rule, called wherever a model name is
resolved for a project: chat and completions, job creation and the dry run (fine-tuning from it), and the scheduler
when it launches such a job.

A permission names one model: sharing an ``ft:`` model shares that model, and sharing a checkpoint model
(``ft:...:ckpt-step-N``) that checkpoint. A grantee may use it, not delete it or share it on. Deleting the
permission takes the access away at the next request; deleting the model deletes its permissions.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.orm import Session

from tunery.db import CheckpointPermission, FineTunedModel


def usable_by(organization_id: str, project_id: str) -> ColumnElement[bool]:
    """The condition a fine-tuned model row meets when the project may use it: its own, or shared with it."""
    shared = exists().where(
        CheckpointPermission.model_id == FineTunedModel.id,
        CheckpointPermission.grantee_project_id == project_id,
        CheckpointPermission.organization_id == organization_id,
    )
    return (FineTunedModel.organization_id == organization_id) & or_(FineTunedModel.project_id == project_id, shared)


def usable_model(s: Session, organization_id: str, project_id: str, model: str) -> FineTunedModel | None:
    """The fine-tuned or checkpoint model named ``model`` if the project may use it, else None."""
    return s.scalar(select(FineTunedModel).where(FineTunedModel.id == model, usable_by(organization_id, project_id)))


def delete_permissions(s: Session, model: str) -> None:
    """A deleted model's permissions go with it."""
    for p in s.scalars(select(CheckpointPermission).where(CheckpointPermission.model_id == model)):
        s.delete(p)
