"""The event loop and the HTTP parser ``tunery serve`` runs on: uvloop and httptools (pyproject.toml's dependencies)
when they are installed, else asyncio and h11 (uvicorn's ``auto``)."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from typing import Any

import grpc
import httpx
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port


def installed(module: str) -> bool:
    """Whether ``module`` imports, as uvicorn's ``auto`` tries it."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_serve_runs_on_uvloop_and_httptools_when_installed(tmp_path, monkeypatch):
    """``api.server.serve`` builds the whole app and hands it to ``uvicorn.run``; here ``uvicorn.run`` runs exactly
    what it was given (uvicorn.run is a Config and a Server), with a probe around the app that records the running
    loop and uvicorn's connections (its protocol objects) while a request is answered."""
    from api.server import serve
    from tunery.settings import Settings

    seen: dict[str, Any] = {}
    answers: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:
        server: uvicorn.Server

        async def probe(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/health":
                seen["loop"] = asyncio.get_running_loop()
                seen["protocols"] = {type(c) for c in server.server_state.connections}
            await app(scope, receive, send)

        server = uvicorn.Server(uvicorn.Config(probe, **options))

        def client() -> None:
            try:
                deadline = time.monotonic() + 60
                while not server.started and time.monotonic() < deadline:
                    time.sleep(0.05)
                base = f"http://{options['host']}:{options['port']}"
                answers["health"] = httpx.get(base + "/health", timeout=30).status_code
                # The public gRPC API runs on the same loop (grpc.aio): it answers on uvloop too.
                with grpc.insecure_channel(app.state.grpc_address) as channel:
                    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                    answers["grpc"] = check.status
            finally:
                server.should_exit = True

        thread = threading.Thread(target=client)
        thread.start()
        server.run()  # in this (the main) thread, as `tunery serve` does
        thread.join()

    monkeypatch.setattr(uvicorn, "run", run)
    settings = Settings(
        data_dir=tmp_path, host="127.0.0.1", port=free_port(), demo_model=False, grpc_port=0, api_grpc_port=0
    )
    serve(settings)

    assert answers == {"health": 200, "grpc": health_pb2.HealthCheckResponse.SERVING}
    if installed("uvloop"):
        import uvloop

        assert isinstance(seen["loop"], uvloop.Loop)
    else:
        assert type(seen["loop"]).__module__.startswith("asyncio")
    if installed("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        assert seen["protocols"] == {HttpToolsProtocol}
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        assert seen["protocols"] == {H11Protocol}
