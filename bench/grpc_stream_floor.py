"""What grpcio itself costs per streamed message: the floor under bench/grpc_vs_rest.py's "watch events".

    .venv/bin/python bench/grpc_stream_floor.py [--messages 10] [--seconds 3]

A bare ``grpc.aio`` server on loopback, no Tunery code: one unary call answering ``--messages`` x 200 bytes in one
message, against one server-streaming call sending the same bytes as ``--messages`` messages (written by an async
generator, and by ``context.write``), each read by a ``grpc.aio`` client one call at a time. Prints milliseconds per
call and the cost of each streamed message beyond the first. A watch that replays N events pays about N times that
over a REST page of the same events, whatever the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

PAYLOAD = b"x" * 200


def _same(b: bytes) -> bytes:
    return b


async def _timed(call: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Milliseconds per call, back to back, after a warm-up."""
    for _ in range(100):
        await call()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await call()
        n += 1
    return (time.perf_counter() - t0) / n * 1e3


async def main(messages: int, seconds: float) -> None:
    import grpc
    from grpc import aio

    async def unary(request: bytes, context: Any) -> bytes:
        return PAYLOAD * messages

    async def generator(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(messages):
            yield PAYLOAD

    async def writes(request: bytes, context: Any) -> None:
        for _ in range(messages):
            await context.write(PAYLOAD)

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_same, response_serializer=_same),
        "Gen": grpc.unary_stream_rpc_method_handler(generator, request_deserializer=_same, response_serializer=_same),
        "Write": grpc.unary_stream_rpc_method_handler(writes, request_deserializer=_same, response_serializer=_same),
    }
    server = aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            one = channel.unary_unary("/floor.Floor/Unary", request_serializer=_same, response_deserializer=_same)
            gen = channel.unary_stream("/floor.Floor/Gen", request_serializer=_same, response_deserializer=_same)
            write = channel.unary_stream("/floor.Floor/Write", request_serializer=_same, response_deserializer=_same)

            async def drain(stream: Any) -> list[bytes]:
                return [m async for m in stream(b"")]

            unary_ms = await _timed(lambda: one(b""), seconds)
            gen_ms = await _timed(lambda: drain(gen), seconds)
            write_ms = await _timed(lambda: drain(write), seconds)
    finally:
        await server.stop(None)
    print(f"unary, {messages} x 200 B in one message: {unary_ms:.3f} ms a call")
    for name, ms in (("async generator", gen_ms), ("context.write", write_ms)):
        extra = (ms - unary_ms) / max(messages - 1, 1) * 1e3
        print(f"stream of {messages} messages ({name}): {ms:.3f} ms a call, {extra:.0f} us per message beyond one")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10, help="events a watch replays (grpc_vs_rest.py's default)")
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.messages, args.seconds))
