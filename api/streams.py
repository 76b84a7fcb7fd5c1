"""Uploaded files: read a multipart request (api/limits.py has already capped its size)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request

from api.errors import InvalidRequest, ServiceError


async def multipart_form(request: Request, param: str, max_fields: int) -> FormData:
    """The request's multipart form. Starlette spools file parts to disk past 1 MB, so an upload is never held whole
    in memory; the request guard stops the body at the route's limit (a 413, raised from here)."""
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except ServiceError:
        raise
    except Exception as e:  # a malformed multipart body
        raise InvalidRequest(f"Could not parse the multipart form: {e}", param=param) from None


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads its multipart form itself (so FastAPI cannot see it): the request
    body as ``/openapi.json`` then declares it, with the fields' schemas (a file is ``format: binary``)."""
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
