"""What every request meets before routing reads its body (``RequestGuard``): the API key, and a cap on the body.

* **The key first.** A request to a ``/v1`` route is authenticated and authorized (api/auth.py's ``admit``) before
  anything reads its body: without a valid key it gets the 401 at once, with a key whose role does not allow the route
  the 403, however large the body it announces or sends. The principal is kept in the request's scope for the
  routes' ``tenant`` dependency.
* **The body's size.** A body may be at most ``TUNERY_MAX_BODY_BYTES`` (4 MiB), except on the multipart upload routes,
  which declare their own limit with ``upload_body`` (``TUNERY_MAX_FILE_BYTES``, ``TUNERY_MAX_UPLOAD_PART_BYTES``,
  plus ``MULTIPART_OVERHEAD`` for the form around the file). A Content-Length over the limit is a 413 at once,
  nothing read; a body without one (chunked) is counted as it arrives, and the moment it passes the limit reading
  stops and the answer is the 413, whatever the route was doing with the body.

* **The rate.** An admitted request takes a token of its project's bucket (api/ratelimit.py); without one it is
  OpenAI's 429 at once. Every answer of a rate-limited project carries its ``x-ratelimit-*`` headers.

The 413 is OpenAI's error object, with the route's own code: ``request_too_large`` by default, ``file_too_large``
or ``part_too_large`` on the upload routes. A route may narrow its limit once it knows more (``narrow_body``: the
part route, once it has looked the upload up).

Starlette's ``RequestBodyLimitMiddleware`` (and FastAPI's ``max_body_size``) count bodies too, but answer in plain
text when their error escapes the app or a response was already on its way, take limits fixed when the routes are
declared, and let the route run before refusing a Content-Length: hence this guard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.routing import RouteContext
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import ADMIN_PREFIX, PRINCIPAL_SCOPE_KEY, Principal, admit
from api.context import AppContext, run_read
from api.errors import APIError, ServiceError, TooLarge, api_error, error_response
from api.ratelimit import RateLimiter, Verdict
from api.routing import RouteTable
from tunery.settings import Settings
from tunery.tenancy import KeyRegistry, WouldBlock

F = TypeVar("F", bound=Callable[..., Any])
Admitted = tuple[Principal, Verdict | None]

# The multipart form around an uploaded file: boundaries, part headers, the other (small) fields.
MULTIPART_OVERHEAD = 64 * 1024
_UPLOAD_BODY = "__tunery_upload_body__"
_SCOPE_KEY = "tunery.body"


def request_too_large(limit: int) -> TooLarge:
    return TooLarge(f"The request body is too large: the limit is {limit} bytes.", code="request_too_large")


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request's body may have, and the error past it."""

    bytes: int
    too_large: Callable[[], ServiceError]


def upload_body(limit: Callable[[Settings], int], too_large: Callable[[int], ServiceError]) -> Callable[[F], F]:
    """Mark a multipart upload route: its file may have ``limit(settings)`` bytes (the body that much plus
    ``MULTIPART_OVERHEAD``), past which the answer is ``too_large(limit)``, instead of ``TUNERY_MAX_BODY_BYTES``."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _UPLOAD_BODY, (limit, too_large))
        return endpoint

    return mark


class _Body:
    """One request's body as the app reads it: counted against its limit, cut off past it."""

    def __init__(self, scope: Scope, receive: Receive, limit: BodyLimit):
        length, chunked = None, False
        for name, value in scope["headers"]:  # lower-case names (ASGI); the first Content-Length, as Starlette's
            if name == b"content-length" and length is None:
                length = value.decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = True
        self.declared = int(length) if length is not None and length.isdigit() else None
        self.has_body = bool(self.declared) or chunked
        self.receive = receive
        self.limit = limit
        self.seen = 0
        self.ended = False
        self.over: ServiceError | None = None

    def narrow(self, limit: BodyLimit) -> None:
        if limit.bytes < self.limit.bytes:
            self.limit = limit
        if (self.declared is not None and self.declared > self.limit.bytes) or self.seen > self.limit.bytes:
            raise self.limit.too_large()

    async def read(self) -> Message:
        if self.over is not None:
            raise self.over
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.ended = not message.get("more_body", False)
            if self.seen > self.limit.bytes:
                self.over = self.limit.too_large()
                raise self.over
        return message

    def answer_start(self, message: Message) -> Message:
        """An answer given before the body was read to its end closes the connection: the server would otherwise
        read the rest, however long, to keep the connection for another request (uvicorn does)."""
        if self.has_body and not self.ended:
            message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
        return message


def narrow_body(request: Request, limit: int, too_large: Callable[[], ServiceError]) -> None:
    """Lower this request's body limit to ``limit`` bytes (a route that knows more than its declared limit), raising
    ``too_large()`` at once when its Content-Length, or what was read of it, is already past."""
    body: _Body | None = request.scope.get(_SCOPE_KEY)
    if body is not None:
        body.narrow(BodyLimit(limit, too_large))


def admission(
    settings: Settings,
    keys: KeyRegistry | None,
    limiter: RateLimiter | None,
    authorization: str | None,
    method: str,
    template: str,
    params: Mapping[str, Any],
    blocking: bool = True,
) -> Admitted:
    """Who a request is (api/auth.py's ``admit``) and its turn in its project's rate limit (a 429 past it): the one
    door of REST (the request guard) and gRPC (api/grpc/calls.py). Blocking: a stored key and a project's limit are
    read from the metadata store. With ``blocking=False`` it raises :class:`WouldBlock` instead, before taking
    anything, so that the caller can ask again in a thread; most requests need no I/O (a bootstrap key or none, a
    limit read in the last seconds) and are admitted on the event loop, without a trip to a thread."""
    principal = admit(settings, keys, authorization, method, template, params, blocking)
    if limiter is None or template.startswith(ADMIN_PREFIX):
        return principal, None
    project = principal.tenant(settings).project_id
    verdict = limiter.take(project, blocking)
    if verdict is not None and verdict.retry_after is not None:
        raise verdict.refusal(project)
    return principal, verdict


class RequestGuard:
    """Authenticate ``/v1`` routes and cap request bodies before any route reads them (see the module)."""

    def __init__(self, app: ASGIApp, ctx: AppContext, routes: RouteTable):
        self.app = app
        self.ctx = ctx
        self.settings = ctx.settings
        self.routes = routes

    async def admit(self, authorization: str | None, method: str, template: str, params: dict[str, Any]) -> Admitted:
        """On the event loop when no I/O is needed, else where the reads run (a stored key, a limit to read again:
        api/context.py's ``run_read``)."""
        ctx = self.ctx
        args = (ctx.settings, ctx.keys, ctx.rate_limiter, authorization, method, template, params)
        try:
            return admission(*args, blocking=False)
        except WouldBlock:
            return await run_read(ctx, lambda: admission(*args, blocking=True))

    def body_limit(self, route: RouteContext | None) -> BodyLimit:
        upload = getattr(route.endpoint, _UPLOAD_BODY, None) if route is not None else None
        if upload is not None:
            limit, too_large = upload
            n = limit(self.settings)
            return BodyLimit(n + MULTIPART_OVERHEAD, lambda: too_large(n))
        n = self.settings.max_body_bytes
        return BodyLimit(n, lambda: request_too_large(n))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.routes.match(scope)
        body = _Body(scope, receive, self.body_limit(route))
        started = False
        rate: list[tuple[bytes, bytes]] = []

        async def answer(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = body.answer_start(message)
                if rate:
                    message["headers"] = [*message.get("headers", []), *rate]
            await send(message)

        try:
            if route is not None and str(route.path).startswith("/v1/"):
                _, child = route.matches(scope)
                scope[PRINCIPAL_SCOPE_KEY], verdict = await self.admit(
                    Headers(scope=scope).get("authorization"),
                    scope["method"],
                    str(route.path),
                    child.get("path_params", {}),
                )
                if verdict is not None:
                    rate = [(k.encode(), v.encode()) for k, v in verdict.headers().items()]
            body.narrow(body.limit)
        except (APIError, ServiceError) as e:
            await error_response(e if isinstance(e, APIError) else api_error(e))(scope, receive, answer)
            return
        scope[_SCOPE_KEY] = body

        async def answer_unless_over(message: Message) -> None:
            # Past the limit, the 413 is the answer: not the 400 or 500 the app made of its interrupted read.
            if body.over is None or started:
                await answer(message)

        try:
            await self.app(scope, body.read, answer_unless_over)
        except ServiceError as e:
            if e is not body.over:
                raise
        if body.over is not None and not started:
            await error_response(api_error(body.over))(scope, receive, answer)
