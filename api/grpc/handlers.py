"""The method handlers of the public services, built from their descriptors: as the generated
``add_*Servicer_to_server`` would, except that a request that does not parse as its message (corrupt bytes, a wrong
wire type) is an ``INVALID_ARGUMENT`` with OpenAI's error, not grpcio's ``UNKNOWN``."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from api.errors import bad_request
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


def _wrap(behaviour: Callable[..., Any], method: MethodDescriptor) -> Callable[..., Any]:
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
            async for out in behaviour(request, context):
                yield out

        return unary_stream

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await _refuse(context, method)
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
            _wrap(getattr(servicer, method.name), method),
            request_deserializer=_deserializer(message_factory.GetMessageClass(method.input_type)),
            response_serializer=_serializer(message_factory.GetMessageClass(method.output_type)),
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
