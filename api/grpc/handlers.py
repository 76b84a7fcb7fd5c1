"""The method handlers of the public services, built from their descriptors: as the generated
``add_*Servicer_to_server`` would, except that a request that does not parse as its message (corrupt bytes, a wrong
wire type) is an ``INVALID_ARGUMENT`` with OpenAI's error, not grpcio's ``UNKNOWN``, and that the fields REST takes
from its path (an id: ``job_id`` of ``/v1/fine_tuning/jobs/{job_id}``) are checked as REST checks its path, with the
type the REST route itself gives the parameter (a :data:`api.protocol.base.Name`: empty or over 256 characters is the
same ``INVALID_ARGUMENT`` as REST's 400; a secret's name is one of a closed set)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from pydantic import TypeAdapter, ValidationError

from api.errors import InvalidRequest, api_error, bad_request, invalid_request
from api.grpc.calls import REST_TWIN
from api.grpc.errors import status_of
from tunery import ids


class Malformed:
    """What a request that did not parse becomes, for the handler to refuse."""


MALFORMED = Malformed()


def _deserializer(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except DecodeError:
            return MALFORMED

    return parse


async def _refuse(context: grpc.aio.ServicerContext, method: MethodDescriptor) -> None:
    err = bad_request(f"The request is not a valid {method.input_type.full_name} message.", code="invalid_message")
    await context.abort_with_status(status_of(err, ids.request_id()))


async def _checked(messages: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: MethodDescriptor) -> Any:
    async for message in messages:
        if message is MALFORMED:
            await _refuse(context, method)
        yield message


def path_fields(service: ServiceDescriptor, method: MethodDescriptor) -> tuple[tuple[str, Any], ...]:
    """The request's fields that REST takes from the path of the method's twin (api/grpc/calls.py's REST_TWIN), each
    with the type that REST route gives its path parameter (read from the route itself: a Name, a closed set)."""
    twin = REST_TWIN.get(f"{service.name}/{method.name}")
    if twin is None:
        return ()
    types = rest_path_types().get(twin, {})
    return tuple((p, kind) for p, kind in types.items() if p in method.input_type.fields_by_name)


@functools.cache
def rest_path_types() -> dict[tuple[str, str], dict[str, Any]]:
    """(method, route template) of every /v1 route: the type of each path parameter, as the route declares it."""
    from fastapi.routing import APIRoute

    from api.app import API_MODULES

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for module in API_MODULES:
        for route in module.router.routes:
            if not isinstance(route, APIRoute):
                continue
            params = {}
            for field in route.dependant.path_params:
                info = field.field_info
                params[field.name] = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            for verb in route.methods or ():
                found[(verb, route.path)] = params
    return found


def path_value(kind: Any, name: str, value: Any) -> Any:
    """``value`` of a request's field that REST takes from its path, checked as REST checks that path parameter
    (its type ``kind``: :data:`api.protocol.base.Name`, or a closed set), refused in REST's words when it fails."""
    try:
        return _adapter(kind).validate_python(value)
    except ValidationError as e:
        raise invalid_request([{**err, "loc": ("path", name)} for err in e.errors()]) from None


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


async def _check_path(request: Any, fields: tuple[tuple[str, Any], ...], context: grpc.aio.ServicerContext) -> None:
    for name, kind in fields:
        try:
            path_value(kind, name, getattr(request, name))
        except InvalidRequest as e:
            await context.abort_with_status(status_of(api_error(e), ids.request_id()))


def _wrap(
    behaviour: Callable[..., Any], method: MethodDescriptor, fields: tuple[tuple[str, Any], ...]
) -> Callable[..., Any]:
    if method.client_streaming:
        if inspect.isasyncgenfunction(behaviour):

            async def stream_stream(messages: Any, context: grpc.aio.ServicerContext) -> Any:
                async for out in behaviour(_checked(messages, context, method), context):
                    yield out

            return stream_stream

        async def stream_unary(messages: Any, context: grpc.aio.ServicerContext) -> Any:
            return await behaviour(_checked(messages, context, method), context)

        return stream_unary
    if inspect.isasyncgenfunction(behaviour):

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is MALFORMED:
                await _refuse(context, method)
            await _check_path(request, fields, context)
            async for out in behaviour(request, context):
                yield out

        return unary_stream

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await _refuse(context, method)
        await _check_path(request, fields, context)
        return await behaviour(request, context)

    return unary_unary


def _serializer(cls: type[Message]) -> Callable[[Message | bytes], bytes]:
    """A method's answers: its messages serialized, or the bytes of one serialized already (the reads' answers kept
    encoded, api/encoded.py and api/grpc/convert.py)."""

    def serialize(answer: Message | bytes) -> bytes:
        if isinstance(answer, bytes):
            return answer
        assert isinstance(answer, cls), f"{type(answer).__name__} is not a {cls.__name__}"
        return answer.SerializeToString()

    return serialize


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def service_handler(servicer: Any, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """The handler of every method of ``service``, run by ``servicer``'s method of the same name."""
    handlers = {}
    for method in service.methods:
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(  # type: ignore[operator]
            _wrap(getattr(servicer, method.name), method, path_fields(service, method)),
            request_deserializer=_deserializer(message_factory.GetMessageClass(method.input_type)),
            response_serializer=_serializer(message_factory.GetMessageClass(method.output_type)),
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
