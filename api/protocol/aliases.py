"""Model aliases (``/v1/tunery/aliases``, Tunery's extension): a project's stable name for one of its models, and
every version of it (docs/aliases.md). OpenAI has no such objects: the shapes follow its conventions (``object``,
``created_at``, cursor lists) and every request field is Tunery's, so an unknown one is a 400."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api.protocol.base import CursorPage, Name, OpenAIResponse, TuneryExtension

MAX_NOTE_LENGTH = 1024


class CreateAliasRequest(TuneryExtension):
    name: Name = Field(description="The alias: lowercase letters, digits, '-', '_', '.'; 1 to 64 characters.")
    model: Name = Field(description="The fine-tuned or checkpoint model it points at.")
    note: str | None = Field(None, max_length=MAX_NOTE_LENGTH, description="Why: kept with the version.")


class UpdateAliasRequest(TuneryExtension):
    model: Name = Field(description="The fine-tuned or checkpoint model it points at from now on.")
    note: str | None = Field(None, max_length=MAX_NOTE_LENGTH, description="Why: kept with the version.")


class RollbackAliasRequest(TuneryExtension):
    to_version: int | None = Field(
        None, ge=1, description="The version whose model to point at again (default: the model before the current)."
    )
    note: str | None = Field(None, max_length=MAX_NOTE_LENGTH, description="Why: kept with the version.")


class ListAliasesRequest(TuneryExtension):
    after: str | None = None
    limit: int = Field(20, ge=1)


class ListAliasVersionsRequest(TuneryExtension):
    after: str | None = None
    limit: int = Field(20, ge=1)


class Alias(OpenAIResponse):
    """An alias: ``model`` is what a request naming ``name`` is served by now; ``version`` its current version."""

    id: str
    object: Literal["tunery.alias"] = "tunery.alias"
    name: str
    model: str
    version: int
    created_at: int
    updated_at: int


class AliasList(CursorPage[Alias]):
    """The project's aliases, newest first."""


class AliasActor(OpenAIResponse):
    """Who made a version, as the audit log names it: ``api_key`` (``id`` a ``key_…`` id or ``bootstrap``,
    ``service_account_id`` for a project key), ``open_access``, ``cli``, or ``job`` (a job that promoted its model:
    ``tunery.eval.promote_to_alias``)."""

    type: str
    id: str
    service_account_id: str | None = None


class AliasVersion(OpenAIResponse):
    """One version of an alias: from ``previous_model`` (None at creation) to ``model``, by whom, when, why, and
    the eval report of ``model`` (its checkpoint's or job's, when it has one and the project may still use it)."""

    id: str
    object: Literal["tunery.alias.version"] = "tunery.alias.version"
    alias: str
    version: int
    action: Literal["created", "updated", "rolled_back"]
    model: str
    previous_model: str | None
    actor: AliasActor
    created_at: int
    note: str | None
    eval_report: dict[str, Any] | None


class AliasVersionList(CursorPage[AliasVersion]):
    """An alias's versions, newest first."""


class AliasDeleted(OpenAIResponse):
    id: str
    object: Literal["tunery.alias"] = "tunery.alias"
    name: str
    deleted: bool
