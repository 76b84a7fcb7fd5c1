"""The FastAPI application: OpenAI-compatible REST under ``/v1``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.telemetry import TelemetryConfig
from fastapi.telemetry._api import _unconfigured  # FastAPI's own test of a global provider (no public one exists)
from opentelemetry import _logs as otel_logs
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import (
    aliases,
    audit,
    caller,
    chat,
    embeddings,
    errors,
    estimates,
    evaluations,
    exports,
    files,
    graders,
    jobs,
    models,
    organization,
    pause,
    permissions,
    secrets,
    uploads,
    webhooks,
)
from api.context import AppContext
from api.limits import RequestGuard
from api.probe import LoopHeartbeat, ProbeProcess
from api.routing import RouteTable
from tunery import ids
from tunery.metrics import CONTENT_TYPE, HTTPMetricsMiddleware


class RequestIdMiddleware:
    """``x-request-id`` on every response (the SDK exposes it as ``_request_id``), errors included.

    It also turns an unexpected exception into an OpenAI-shaped 500 (logged here with its traceback, never
    sent to the client), so that response carries the request id too.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ids.request_id()
        for k, v in scope.get("headers", []):
            if k == b"x-request-id" and 0 < len(v) <= 128:
                rid = v.decode("latin-1")

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", []).append((b"x-request-id", rid.encode("latin-1")))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            errors.log.exception("unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            if started:
                raise
            response = errors.error_response(
                errors.APIError(500, "The server had an error while processing your request.", type=errors.SERVER_ERROR)
            )
            await response(scope, receive, send_with_id)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The probe port (TUNERY_PROBE_PORT, api/probe.py) and the public gRPC API, which runs on the app's event loop
    (TUNERY_API_GRPC_PORT), from the app's start to its end."""
    ctx: AppContext = app.state.ctx
    settings = ctx.settings
    app.state.probe_address = app.state.heartbeat = None
    if settings.probe_port < 0:
        async with _grpc_api(app):
            yield
        return
    heartbeat = LoopHeartbeat()
    heartbeat.start()
    probe = ProbeProcess(settings.host, settings.probe_port, heartbeat, settings.probe_stale_seconds)
    try:
        await asyncio.to_thread(probe.start)
        app.state.probe_address, app.state.heartbeat = probe.address, heartbeat
        async with _grpc_api(app):
            yield
    finally:
        await asyncio.to_thread(probe.stop)
        await heartbeat.stop()
        heartbeat.close()


@asynccontextmanager
async def _grpc_api(app: FastAPI) -> AsyncIterator[None]:
    ctx: AppContext = app.state.ctx
    settings = ctx.settings
    if settings.api_grpc_port < 0:
        app.state.grpc_address = None
        yield
        return
    from api.grpc.server import PublicGrpcServer

    server = PublicGrpcServer(ctx, settings.api_grpc_host or settings.host, settings.api_grpc_port)
    await server.start()
    app.state.grpc_address = server.address
    try:
        yield
    finally:
        await server.stop()


# The modules of the /v1 API, each with its ``router`` (its routes under api/routing.py's API_PREFIX): the app lists
# their routes as its own, and the gRPC twins read their routes' path parameter types from them (api/grpc/handlers.py).
API_MODULES = (
    # First, the modules of the routes clients poll (a route costs every request that reaches past it; no request
    # matches two routes, tests/api/test_routing.py, so the order decides nothing else)
    jobs,
    files,
    models,
    uploads,
    estimates,
    pause,
    permissions,
    aliases,
    evaluations,
    exports,
    chat,
    embeddings,
    graders,
    organization,
    audit,
    webhooks,
    secrets,
    caller,
)


# The routes clients poll (an SDK waiting on a job, a dashboard), in front of every other /v1 route: the router tries
# the routes in order, about 1.5 us each, so the models list, behind the jobs' and the files' routes, tried 20.
POLLED = (
    ("GET", "/v1/fine_tuning/jobs/{job_id}"),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/files/{file_id}"),
    ("GET", "/v1/files"),
    ("GET", "/v1/models"),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"),
)


def _polled_first(route: BaseRoute) -> int:
    """A route's rank: the polled in :data:`POLLED`'s order, then the others (a stable sort keeps theirs)."""
    methods = getattr(route, "methods", None) or ()
    for rank, (method, path) in enumerate(POLLED):
        if method in methods and getattr(route, "path", None) == path:
            return rank
    return len(POLLED)


def _telemetry() -> TelemetryConfig:
    """FastAPI's native OpenTelemetry (a span, metrics and logs of each request) for the signals whose global provider
    is configured when the app is built (``opentelemetry-instrument tunery serve``, or FastAPI's own start-up
    configuration, FASTAPI_OTEL_AUTO_CONFIGURE); the others off. Left to ask, FastAPI checks the three global
    providers on every request (each a look at the environment): about 2% of the API's CPU under load."""
    if os.getenv("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return {}
    return {
        "tracing": not _unconfigured(trace.get_tracer_provider()),
        "metrics": not _unconfigured(otel_metrics.get_meter_provider()),
        "logs": not _unconfigured(otel_logs.get_logger_provider()),
    }


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(
        title="Tunery",
        version="0.1.0",
        summary="Fine-tuning as a service, OpenAI-compatible.",
        lifespan=lifespan,
        telemetry=_telemetry(),
    )
    app.state.ctx = ctx
    errors.install(app)

    # A coroutine: a probe's answer must not wait for a thread of the pool, which a busy API keeps full. First: the
    # router tries the routes in order, each costing a request that reaches past it.
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # The routes of the modules' routers, as the app's own: FastAPI (0.165) keeps an included router as a branch it
    # matches route by route twice a request (to choose it, then to run it), about 2.5 us a route tried against 0.9
    # for a route of the app's own list: 120-200 us of a request's CPU for a route late in the list.
    api_routes = [route for module in API_MODULES for route in module.router.routes]
    app.router.routes.extend(sorted(api_routes, key=_polled_first))

    if ctx.settings.dashboard:
        from api.dashboard import make_router

        app.include_router(make_router())

    if ctx.settings.metrics_enabled:
        # Prometheus scrapes it without an API key: aggregate counts only, routes as templates (docs/metrics.md).
        @app.get("/metrics", include_in_schema=False)
        def prometheus() -> Response:
            return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    # The last added runs first: request id, metrics, then the guard, so its refusals too have a request id and count.
    routes = RouteTable(app.routes)
    app.add_middleware(RequestGuard, ctx=ctx, routes=routes)
    if ctx.settings.metrics_enabled:
        app.add_middleware(HTTPMetricsMiddleware, metrics=ctx.metrics, route_of=routes.template)
    app.add_middleware(RequestIdMiddleware)
    return app
