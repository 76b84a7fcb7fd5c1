"""``GET /v1/tunery/me`` (Tunery's extension): who the API key of a request is, so a client (the dashboard) can offer
only what that key may do. OpenAI has no such object; the shape follows its conventions (``object``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.protocol.base import OpenAIResponse


class Caller(OpenAIResponse):
    object: Literal["tunery.caller"] = "tunery.caller"
    organization_id: str
    project_id: str = Field(description="The project the key acts on (an admin key: the default project)")
    role: str = Field(description="owner, member or reader (docs/tenancy.md); admin for an organization admin key")
    admin: bool = Field(description="An organization admin key (TUNERY_API_KEYS or an admin key)")
    writes: bool = Field(description="Whether the key may change the project's objects (readers may not)")
    key_id: str | None = Field(description="The stored key's id; null for a TUNERY_API_KEYS key and open access")
    open_access: bool = Field(
        description="The server takes requests without a key: it has none yet (the embedded mode, or TUNERY_ALLOW_OPEN)"
    )
