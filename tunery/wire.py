"""How Tunery's objects are sent: an optional field OpenAI does not make nullable is left out when None, and the JSON
schema says so. One home for the rule, used by the API's responses (api/protocol/base.py) and by the grader objects
(tunery/graders/), which tunery/ defines because the trainer reads them too."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


def omitted(description: str | None = None) -> Any:
    """A field that is left out, not sent as null, when it is None (OpenAI's optional fields that are not
    nullable)."""
    return Field(default=None, exclude_if=lambda v: v is None, description=description)


def schema_as_sent(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """``json_schema_extra`` of a model with :func:`omitted` fields: such a field is neither required nor nullable
    (when it is sent, it has a value)."""
    required = schema.get("required", [])
    for name, info in cls.model_fields.items():
        if info.exclude_if is None:
            continue
        if name in required:
            required.remove(name)
        prop = schema.get("properties", {}).get(name, {})
        prop.pop("default", None)
        branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
        if len(branches) == 1:
            del prop["anyOf"]
            prop.update(branches[0])
    if not required:
        schema.pop("required", None)
