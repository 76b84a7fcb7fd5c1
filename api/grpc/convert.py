"""Protobuf messages to and from the REST API's typed objects: one rule for every RPC.

A message mirrors its REST object field for field (the same names), so a request message becomes the same dict a
JSON body would be (:func:`message_dict`: only the fields the client set, so an unset field takes the REST default)
and a service's pydantic answer becomes its message through its JSON form (:func:`to_message`). The conversion is
strict: a field the answer has and the message lacks is an error, so a REST object that grows a field fails the
parity tests until its message has it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from api.encoded import EncodedPage, Encoding

M = TypeVar("M", bound=Message)

# google.protobuf.Value, Struct and ListValue are JSON values: they convert as JSON does.
JSON_TYPES = frozenset({"google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue"})


# The integers a double holds exactly: a JSON number in that range without a fraction is read as an integer.
EXACT_INTEGERS = 2**53


def _json(v: Any) -> Any:
    """A JSON value read from a Struct, a Value or a ListValue as REST's JSON parser reads it: protobuf keeps every
    number as a double, so ``3`` comes out as ``3.0``; a whole number comes back as the integer a JSON body would
    have sent (a grader's ``{{item.n}}`` renders ``3``, not ``3.0``; a python grader's item has an ``int``)."""
    if isinstance(v, float):
        return int(v) if v.is_integer() and abs(v) < EXACT_INTEGERS else v
    if isinstance(v, dict):
        return {k: _json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json(x) for x in v]
    return v


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    if field.message_type.full_name in JSON_TYPES:
        return _json(json_format.MessageToDict(value))
    return message_dict(value)


def message_dict(message: Message) -> dict[str, Any]:
    """The fields the client set, as the JSON object REST would have been sent (integers stay integers, in JSON
    values too)."""
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


def _json_value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int | float):
        out.number_value = v
    else:
        json_format.ParseDict(v, out)
    return out


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(d)
    return out


@cache
def _plan(desc: Descriptor) -> tuple[type[Message], dict[str, tuple[str, Descriptor | None]]]:
    """How each field of a message type is built from JSON: its kind, and its message type where it has one."""
    kinds: dict[str, tuple[str, Descriptor | None]] = {}
    for f in desc.fields:
        sub = f.message_type
        if sub is None:
            kinds[f.name] = ("scalar", None)
        elif sub.GetOptions().map_entry:
            kinds[f.name] = ("map", sub.fields_by_name["value"].message_type)
        elif sub.full_name == "google.protobuf.Value":
            kinds[f.name] = ("values" if f.is_repeated else "value", None)
        elif sub.full_name == "google.protobuf.Struct":
            kinds[f.name] = ("structs" if f.is_repeated else "struct", None)
        else:
            kinds[f.name] = ("messages" if f.is_repeated else "message", sub)
    return message_factory.GetMessageClass(desc), kinds


def _build(desc: Descriptor, data: dict[str, Any], engine: bool) -> Message:
    cls, kinds = _plan(desc)
    kwargs: dict[str, Any] = {}
    for name, v in data.items():
        if v is None:
            continue  # a null is an unset field
        if name not in kinds:
            if engine:
                continue
            raise ValueError(f"{desc.full_name} has no field {name!r}: add it to the proto")
        kind, sub = kinds[name]
        if kind == "scalar":
            kwargs[name] = v
        elif kind == "message":
            kwargs[name] = _build(sub, v, engine)  # type: ignore[arg-type]
        elif kind == "messages":
            kwargs[name] = [_build(sub, x, engine) for x in v]  # type: ignore[arg-type]
        elif kind == "value":
            kwargs[name] = _json_value(v)
        elif kind == "values":
            kwargs[name] = [_json_value(x) for x in v]
        elif kind == "struct":
            kwargs[name] = _struct(v)
        elif kind == "structs":
            kwargs[name] = [_struct(x) for x in v]
        else:  # a map
            kwargs[name] = v if sub is None else {k: _build(sub, x, engine) for k, x in v.items()}
    return cls(**kwargs)


def to_message(obj: BaseModel | dict[str, Any], cls: type[M], *, engine: bool = False) -> M:
    """``obj`` (a service's answer, or its JSON form) as a ``cls`` message; a null is an unset field. ``engine``: an
    answer of a serving engine, whose fields beyond OpenAI's (vLLM adds its own) are left out rather than refused.
    (Built through the message constructors, in C: a quarter of ``json_format.ParseDict``'s time.)"""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    message = _build(cls.DESCRIPTOR, data, engine)
    assert isinstance(message, cls)
    return message


# ---- answers encoded once (api/encoded.py) ------------------------------------------------------------------------
@cache
def encoding(cls: type[Message]) -> Encoding:
    """A service object as a serialized ``cls`` message: the reads keep it (api/encoded.py), as they keep JSON."""
    return Encoding(f"pb:{cls.DESCRIPTOR.full_name}", lambda obj: to_message(obj, cls).SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def list_message(cls: type[Message], items: Sequence[bytes], **fields: Any) -> bytes:
    """A serialized list message (``ListJobsResponse``: ``object``, ``data``, ...) whose ``data`` are ``items``,
    messages serialized already: each is appended as a length-delimited field, which is how protobuf encodes a
    repeated message field, so the bytes parse as ``cls(data=[...], **fields)``, with nothing parsed or built here."""
    head = cls(object="list", **fields).SerializeToString()
    tag = _varint(cls.DESCRIPTOR.fields_by_name["data"].number << 3 | 2)  # wire type 2: length-delimited
    return head + b"".join(tag + _varint(len(item)) + item for item in items)


def page_message(cls: type[Message], page: EncodedPage) -> bytes:
    """:func:`list_message` of a page: its ``first_id``, ``last_id`` and ``has_more`` as REST answers them."""
    ids = page.ids
    return list_message(
        cls, page.items, first_id=ids[0] if ids else "", last_id=ids[-1] if ids else "", has_more=page.has_more
    )
