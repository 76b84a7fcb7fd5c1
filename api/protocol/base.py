"""The base models every family's protocol builds on.

- :class:`OpenAIRequest`: a request OpenAI defines. A field Tunery does not model is accepted, kept (the vLLM
  backend passes it on) and logged once per request with a warning naming it: new SDKs send new fields, and a
  client must not break because the SDK moved ahead of the server. Its parts (a message, an option object) are
  :class:`OpenAIObject`\\ s, which keep unknown fields the same way and leave the warning to the request.
- :class:`TuneryExtension`: a section of Tunery's own extensions (the ``tunery.*`` fields). Tunery defines every
  field there, so an unknown one is a mistake worth a 400, not a warning.
- :class:`OpenAIResponse`: an object Tunery answers with. Its JSON schema (what ``/openapi.json`` publishes) says
  exactly what is sent: a field with a default is always sent and so required; a field declared with
  :func:`omitted` is left out when it is None (OpenAI's optional, non-nullable fields such as a file's
  ``expires_at``) and is neither required nor nullable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.encoded import EncodedPage
from tunery.wire import omitted as omitted  # re-exported: the protocol modules import it from here
from tunery.wire import schema_as_sent

log = logging.getLogger("tunery.api")

# The longest id or model name a client may send, in a path, a body or a query: Tunery's ids are about 30
# characters and ``ft:`` names stay under 200. A longer one is a 400 before any lookup, so no error echoes it whole.
MAX_NAME_LENGTH = 256
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _unknown(value: Any, where: str) -> list[str]:
    """The paths (``messages[0].foo``) of the undeclared fields of ``value`` and its OpenAI parts."""
    if isinstance(value, OpenAIObject):
        found = [_join(where, k) for k in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _unknown(getattr(value, name), _join(where, name))
        return found
    if isinstance(value, list):
        return [path for i, item in enumerate(value) for path in _unknown(item, f"{where}[{i}]")]
    return []


class OpenAIObject(BaseModel):
    """A part of an OpenAI request: fields it does not declare are accepted and kept (reported by the request)."""

    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        """The fields this object and its parts carry that their models do not declare, as dotted paths."""
        return _unknown(self, "")


class OpenAIRequest(OpenAIObject):
    """A whole OpenAI request. Validating one logs a warning naming its unknown fields, if it has any."""

    @model_validator(mode="after")
    def _warn_unknown_fields(self) -> Self:
        unknown = self.unknown_fields()
        if unknown:
            log.warning(
                "%s: accepted field(s) Tunery does not know: %s", type(self).__name__, ", ".join(sorted(unknown))
            )
        return self


class TuneryExtension(BaseModel):
    """A section of Tunery's own ``tunery.*`` extensions: every field is Tunery's, so an unknown one is a 400."""

    model_config = ConfigDict(extra="forbid")


class PageRequest(TuneryExtension):
    """A list request of a Tunery resource: the cursor (an id of the last page) and the page size."""

    after: str | None = None
    limit: int = Field(20, ge=1)


class OpenAIResponse(BaseModel):
    """An object Tunery answers with. Built by the services, never from client input: undeclared fields are a bug
    (forbidden), except where a subclass passes on what a serving engine answered."""

    model_config = ConfigDict(
        extra="forbid", json_schema_serialization_defaults_required=True, json_schema_extra=schema_as_sent
    )


T = TypeVar("T", bound=OpenAIResponse)


class CursorPage(OpenAIResponse, Generic[T]):
    """A page of a cursor-paginated list (api/pagination.py): ``first_id`` and ``last_id`` are empty strings when
    the page is. A family's list subclasses it with its object type (``class FileList(CursorPage[FileObject])``)."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str
    last_id: str
    has_more: bool

    @classmethod
    def of(cls, data: list[T], has_more: bool) -> Self:
        ids = [getattr(item, "id") for item in data]  # noqa: B009 (every listed object has one)
        return cls(data=data, first_id=ids[0] if ids else "", last_id=ids[-1] if ids else "", has_more=has_more)

    @classmethod
    def json_of(cls, page: EncodedPage) -> bytes:
        """The JSON of ``cls.of(objects, has_more)`` from the page's objects as JSON already (api/encoded.py): the
        same bytes, without building the objects again."""
        ids = page.ids
        empty = cls(data=[], first_id=ids[0] if ids else "", last_id=ids[-1] if ids else "", has_more=page.has_more)
        return with_data(empty, page.items)


def with_data(empty: OpenAIResponse, items: Sequence[bytes]) -> bytes:
    """The JSON of a list object built with ``data=[]``, with ``items`` (its objects' JSON) as its data."""
    head, sep, tail = empty.model_dump_json().encode().partition(b'"data":[]')
    assert sep, "a list's JSON has its data"
    return b"".join((head, b'"data":[', b",".join(items), b"]", tail))


class Error(OpenAIResponse):
    """OpenAI's ``Error``: ``type`` is ``invalid_request_error``, ``server_error`` or ``rate_limit_error``."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIResponse):
    """OpenAI's ``ErrorResponse``: the body of every failure (api/errors.py)."""

    error: Error
