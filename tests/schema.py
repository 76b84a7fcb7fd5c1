"""Validate responses against OpenAI's published OpenAPI schema (normalised to JSON Schema 2020-12)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).parent / "openai" / "openapi-finetuning.yaml"


def normalise(node: Any) -> Any:
    """OpenAPI 3.0 idioms -> JSON Schema 2020-12 (``nullable``, boolean exclusive bounds)."""
    if isinstance(node, list):
        return [normalise(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: normalise(v) for k, v in node.items() if not k.startswith("x-")}
    # 3.0's boolean exclusiveMinimum/Maximum qualify minimum/maximum; 2020-12 wants the number itself.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), bool) and out.pop(bound) and limit in out:
            out[bound] = out.pop(limit)
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _document() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    return {"components": {"schemas": normalise(spec["components"]["schemas"])}}


def validate(obj: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError if ``obj`` does not match ``components.schemas[schema_name]``."""
    doc = _document()
    if schema_name not in doc["components"]["schemas"]:
        raise KeyError(schema_name)
    schema = {**doc, "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema).validate(obj)
