"""The FastAPI application: OpenAI-compatible REST under ``/v1``."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import chat, errors, files, jobs, models
from api.context import AppContext
from tunery import ids


class RequestIdMiddleware:
    """``x-request-id`` on every response (the SDK exposes it as ``_request_id``)."""

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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode("latin-1")))
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(title="Tunery", version="0.1.0", summary="Fine-tuning as a service, OpenAI-compatible.")
    app.state.ctx = ctx
    errors.install(app)
    for module in (files, jobs, models, chat):
        app.include_router(module.router, prefix="/v1")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(RequestIdMiddleware)
    return app
