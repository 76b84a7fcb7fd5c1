"""The floor under bench/grpc_vs_rest.py: a bare gRPC server against a bare REST server, no Tunery code.

    .venv/bin/python bench/transport_floor.py [--seconds 3] [--concurrency 1 32] [--bytes 900]

Each server runs in its own process and answers one call with ``--bytes`` bytes (about a job's JSON):

* REST: a FastAPI app with one ``async def`` route, run by uvicorn on uvloop and httptools (as ``tunery serve``
  runs the API), read by ``aiohttp`` with one keep-alive connection per client (as bench/grpc_vs_rest.py does);
* gRPC: a ``grpc.aio`` server with one unary method (a generic handler, bytes in and out: no protobuf), on uvloop
  (as the public gRPC API runs on the API's loop), read by a ``grpc.aio`` client over one channel.

For each concurrency, prints requests/s, the mean round trip, and the CPU the server and the client spent per call.
What gRPC costs here beyond REST, per call, no server code can take back (issue 13's target: gRPC at least as fast
as REST for every call).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_rest(port: int, size: int) -> None:
    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()
    body = b"x" * size

    @app.get("/x")
    async def answer() -> Response:
        return Response(body, media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop", http="httptools")


def serve_grpc(port: int, size: int) -> None:
    import grpc
    import uvloop

    body = b"x" * size

    async def main() -> None:
        server = grpc.aio.server()

        async def answer(request: bytes, context: Any) -> bytes:
            return body

        handler = grpc.method_handlers_generic_handler("t.S", {"M": grpc.unary_unary_rpc_method_handler(answer)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


async def _load(call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> tuple[int, float]:
    """(calls, seconds) of ``concurrency`` clients calling back to back, after a warm-up."""
    for _ in range(200):
        await call()
    done = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, time.perf_counter() - t0


async def drive(kind: str, port: int, concurrency: int, seconds: float) -> tuple[int, float]:
    if kind == "gRPC":
        import grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary("/t.S/M")

            async def call() -> None:
                await method(b"")

            return await _load(call, concurrency, seconds)
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def get() -> None:
            async with session.get(f"http://127.0.0.1:{port}/x") as r:
                await r.read()

        return await _load(get, concurrency, seconds)


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--bytes", type=int, default=900)
    ap.add_argument("--serve", choices=("REST", "gRPC"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        (serve_rest if args.serve == "REST" else serve_grpc)(args.port, args.bytes)
        return
    print(f"{os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.bytes} bytes a call")
    head = ("server", "clients", "calls/s", "round trip us", "server CPU us", "client CPU us")
    print("{:6s} {:>7s} {:>9s} {:>14s} {:>14s} {:>14s}".format(*head))
    rates: dict[tuple[str, int], float] = {}
    for kind in ("REST", "gRPC"):
        port = _port()
        cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--bytes", str(args.bytes)]
        server = subprocess.Popen(cmd)
        try:
            time.sleep(3)
            for concurrency in args.concurrency:
                cpu0, own0 = _cpu(server.pid), time.process_time()
                done, took = asyncio.run(drive(kind, port, concurrency, args.seconds))
                server_us = (_cpu(server.pid) - cpu0) / done * 1e6  # the warm-up's calls included: a little high
                client_us = (time.process_time() - own0) / done * 1e6
                rates[kind, concurrency] = done / took
                trip = took / done * concurrency * 1e6
                print(f"{kind:6s} {concurrency:7d} {done / took:9.0f} {trip:14.0f} {server_us:14.0f} {client_us:14.0f}")
        finally:
            server.kill()
            server.wait()
    for concurrency in args.concurrency:
        print(f"gRPC/REST at {concurrency} clients: {rates['gRPC', concurrency] / rates['REST', concurrency]:.2f}")


if __name__ == "__main__":
    main()
