"""Errors over gRPC: the REST API's errors (api/errors.py) mapped, in this one place, to gRPC status codes.

The status message is OpenAI's message; a ``google.rpc.ErrorInfo`` detail carries OpenAI's ``type``, ``code`` and
``param`` (``metadata``), its ``reason`` the code (or the type when there is none), its ``domain`` ``tunery``. A
client reads them with ``grpc_status.rpc_status.from_call``. A failure no rule covers is ``INTERNAL`` with a generic
message, its traceback logged on the server and never sent.
"""

from __future__ import annotations

import collections
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import ValidationError
from sqlalchemy.exc import DataError

from api.errors import SERVER_ERROR, APIError, ServiceError, api_error, bad_request, invalid_request

log = logging.getLogger("tunery.api.grpc")

DOMAIN = "tunery"
# An HTTP status as the gRPC code that means the same (the REST status of each ServiceError class is api/errors.py's
# HTTP_STATUS: one table each way, no rule written twice).
GRPC_CODE: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    return GRPC_CODE.get(http_status, grpc.StatusCode.INTERNAL)


def as_api_error(exc: BaseException) -> APIError:
    """Any exception of a call as the REST API would answer it (its status, OpenAI's error object)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ServiceError):
        return api_error(exc)
    if isinstance(exc, ValidationError):
        return api_error(invalid_request(exc.errors()))
    if isinstance(exc, DataError) and "NUL (0x00)" in str(exc.orig):
        return bad_request("Invalid request: a value contains a NUL character (\\u0000).", code="invalid_value")
    log.error("unhandled error in a gRPC call", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.", type=SERVER_ERROR)


class RichStatus(collections.namedtuple("RichStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    """A status with its trailing metadata (the ErrorInfo detail, the request id)."""


def status_of(err: APIError, request_id: str | None = None) -> grpc.Status:
    """The rich status of ``err``: its code, OpenAI's message, an ErrorInfo with type, code and param, and the
    call's request id (``x-request-id``) in the trailing metadata."""
    code = grpc_code(err.status)
    metadata = {"type": err.type, "code": err.code or "", "param": err.param or "", "http_status": str(err.status)}
    if err.status == 429 or err.status == 503:
        retry = err.headers.get("retry-after")
        if retry:
            metadata["retry_after"] = retry
    info = error_details_pb2.ErrorInfo(reason=err.code or err.type, domain=DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=err.message, details=[detail])
    plain = rpc_status.to_status(status)
    extra = (("x-request-id", request_id),) if request_id else ()
    return RichStatus(plain.code, plain.details, (*plain.trailing_metadata, *extra))
