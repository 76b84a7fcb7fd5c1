"""Checkpoint permissions (``/v1/fine_tuning/checkpoints/{model}/permissions``), as OpenAI's schema has them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.protocol.base import CursorPage, Name, OpenAIRequest, OpenAIResponse


class CreateCheckpointPermissionRequest(OpenAIRequest):
    """OpenAI's ``CreateFineTuningCheckpointPermissionRequest``."""

    project_ids: list[Name] = Field(min_length=1, max_length=100, description="The projects to grant access to.")


class ListCheckpointPermissionsRequest(OpenAIRequest):
    after: str | None = None
    limit: int = Field(10, ge=1)
    order: Literal["ascending", "descending"] = "descending"
    project_id: str | None = None


class CheckpointPermission(OpenAIResponse):
    """OpenAI's ``FineTuningCheckpointPermission``: ``project_id`` is the project granted access."""

    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str


class CheckpointPermissionList(CursorPage[CheckpointPermission]):
    """OpenAI's ``ListFineTuningCheckpointPermissionResponse``."""


class CheckpointPermissionDeleted(OpenAIResponse):
    """OpenAI's ``DeleteFineTuningCheckpointPermissionResponse``."""

    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool
