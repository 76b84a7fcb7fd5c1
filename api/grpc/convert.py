"""Protobuf messages to and from the REST API's typed objects: one rule for every RPC.

A message mirrors its REST object field for field (the same names), so a request message becomes the same dict a
JSON body would be (:func:`message_dict`: only the fields the client set, so an unset field takes the REST default)
and a service's pydantic answer becomes its message through its JSON form (:func:`to_message`). The conversion is
strict: a field the answer has and the message lacks is an error, so a REST object that grows a field fails the
parity tests until its message has it too.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

M = TypeVar("M", bound=Message)

# google.protobuf.Value, Struct and ListValue are JSON values: they convert as JSON does.
JSON_TYPES = frozenset({"google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue"})


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    if field.message_type.full_name in JSON_TYPES:
        return json_format.MessageToDict(value)
    return message_dict(value)


def message_dict(message: Message) -> dict[str, Any]:
    """The fields the client set, as the JSON object REST would have been sent (integers stay integers)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def to_message(obj: BaseModel | dict[str, Any], cls: type[M], *, engine: bool = False) -> M:
    """``obj`` (a service's answer, or its JSON form) as a ``cls`` message; a null is an unset field. ``engine``: an
    answer of a serving engine, whose fields beyond OpenAI's (vLLM adds its own) are left out rather than refused."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return json_format.ParseDict(data, cls(), ignore_unknown_fields=engine)
