"""A project's secrets (``/v1/tunery/secrets``, Tunery's extension): the values its jobs' integrations read (a W&B API
key, MLflow credentials: tunery/integrations.py ``SecretName``). A value goes in, never out: every answer names the
secret and says when it was set. docs/integrations.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from api.protocol.base import OpenAIResponse, TuneryExtension
from tunery.integrations import MAX_SECRET_LENGTH


class SetSecretRequest(TuneryExtension):
    value: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SECRET_LENGTH)] = Field(
        description="The secret's value: stored, handed to the trainers of the project's jobs that use it, never "
        "answered."
    )


class ProjectSecret(OpenAIResponse):
    """A secret as every answer shows it: its name and when it was set, never its value."""

    object: Literal["tunery.secret"] = "tunery.secret"
    name: str
    created_at: int
    updated_at: int


class ProjectSecretList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ProjectSecret]


class ProjectSecretDeleted(OpenAIResponse):
    object: Literal["tunery.secret.deleted"] = "tunery.secret.deleted"
    name: str
    deleted: bool
