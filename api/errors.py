"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status.

Every failure a client can cause becomes one of these; anything unexpected is logged with its traceback on
the server and answered with a generic message, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.protocol.base import ErrorResponse

log = logging.getLogger("tunery.api")

# The `type` values Tunery uses (the SDK dispatches on the status; these follow OpenAI's names).
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


class ServiceError(Exception):
    """A failure a service (api/services/) reports, free of any transport: what went wrong (the class), a message
    written for the client, and OpenAI's ``param`` and ``code``. The REST API answers it with OpenAI's error body
    and the HTTP status of its class (:func:`api_error`); the gRPC API will map the class to a status code."""

    type: ClassVar[str] = INVALID_REQUEST

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(ServiceError):
    """The request cannot be served as sent (400)."""


class NotFound(ServiceError):
    """The named object does not exist for the caller (404)."""


class PermissionDenied(ServiceError):
    """The caller's key is valid but its role does not allow this (403). Never for another project's object: that
    is a NotFound, so a key learns nothing of what other projects hold."""


class TooLarge(ServiceError):
    """The request's data is over a size limit (413)."""


class Conflict(ServiceError):
    """The object is being changed by another request; the same request may succeed if retried (409)."""


class Unavailable(ServiceError):
    """The service cannot serve this now (503). ``retry_after`` (seconds) when a retry later will be served; None
    when retrying will not help until the configuration changes."""

    type = SERVER_ERROR

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: int | None = None
    ):
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class RateLimited(Unavailable):
    """Too many requests are waiting (429)."""

    type = "rate_limit_error"


# Most specific class first: RateLimited is an Unavailable.
HTTP_STATUS: dict[type[ServiceError], int] = {
    RateLimited: 429,
    Unavailable: 503,
    InvalidRequest: 400,
    NotFound: 404,
    PermissionDenied: 403,
    TooLarge: 413,
    Conflict: 409,
}


def api_error(e: ServiceError) -> APIError:
    """A service's typed error as the REST API answers it: OpenAI's error body with the HTTP status of its class."""
    status = next((code for cls, code in HTTP_STATUS.items() if isinstance(e, cls)), 500)
    headers: dict[str, str] = {}
    if isinstance(e, Unavailable):
        headers = {"retry-after": str(e.retry_after)} if e.retry_after else {"x-should-retry": "false"}
    elif isinstance(e, Conflict):
        headers = {"x-should-retry": "true"}
    return APIError(status, e.message, type=e.type, param=e.param, code=e.code, headers=headers)


# What a router declares its failures to be in /openapi.json (``APIRouter(responses=...)``): OpenAI's error body.
# ("4XX" also keeps FastAPI from documenting its own 422, which Tunery answers as a 400 in OpenAI's shape.)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request was refused: OpenAI's error object."},
    "5XX": {"model": ErrorResponse, "description": "The server failed or cannot serve now: OpenAI's error object."},
}


def error_response(err: APIError) -> JSONResponse:
    # The SDK retries 408, 409, 429 and 5xx unless told not to; other client errors never succeed on a retry.
    retryable = err.status >= 500 or err.status == 429
    headers = dict(err.headers) if retryable else {"x-should-retry": "false", **err.headers}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


_UNION_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _is_field(part: object) -> bool:
    """Pydantic adds union member tags (``literal['auto']``, ``constrained-int``) to locations: skip them."""
    if isinstance(part, int):
        return True
    p = str(part)
    return p not in _UNION_TAGS and not any(c in p for c in "[]-(") and p not in ("body", "query", "path", "header")


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if _is_field(p)]
    if not parts:
        return None
    out = str(parts[0])
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


# Among a union's alternatives, report the most specific failure (a bound, not "should be 'auto'").
_VAGUE = {
    "literal_error",
    "none_required",
    "int_type",
    "float_type",
    "string_type",
    "list_type",
    "dict_type",
    "model_type",
    "int_parsing",
    "float_parsing",
    "is_instance_of",
    "union_tag_invalid",
}


def _pick(errs: list[dict[str, Any]]) -> dict[str, Any]:
    first_param = _loc_to_param(tuple(errs[0].get("loc", ())))
    same = [e for e in errs if _loc_to_param(tuple(e.get("loc", ()))) == first_param]
    specific = [e for e in same if e.get("type") not in _VAGUE]
    return (specific or same)[0]


def invalid_request(errs: Sequence[Any]) -> InvalidRequest:
    """Pydantic's validation errors (``ValidationError.errors()``) of a typed request as one InvalidRequest naming
    the most specific failure, in OpenAI's words."""
    first = _pick(list(errs)) if errs else {"loc": (), "msg": "invalid request"}
    param = _loc_to_param(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "missing":
        message = f"Missing required parameter: '{param}'." if param else "Missing required parameter."
    elif kind == "json_invalid":
        message = "We could not parse the JSON body of your request. Send valid JSON."
        param = None
    else:
        msg = str(first.get("msg", "invalid value"))
        message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
    return InvalidRequest(message, param=param)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(api_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(api_error(invalid_request(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(APIError(404, "Unknown request URL. Check the path and method.", code="unknown_url"))
        if exc.status_code == 405:
            return error_response(APIError(405, "Method not allowed for this URL.", code="method_not_allowed"))
        return error_response(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refuses NUL characters in text: a NUL in an id, a cursor or a name sent by the client is a bad
        # request there (SQLite simply finds nothing). Any other refusal of a value is the server's fault.
        if "NUL (0x00)" in str(exc.orig):
            return error_response(
                bad_request("Invalid request: a value contains a NUL character (\\u0000).", code="invalid_value")
            )
        log.error("database refused a value on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(
            APIError(500, "The server had an error while processing your request.", type=SERVER_ERROR)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            APIError(500, "The server had an error while processing your request.", type=SERVER_ERROR)
        )
