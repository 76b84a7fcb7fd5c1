"""Uploaded files: read a multipart request, refused early when it is already past a size limit."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import FormData
from starlette.requests import Request

from api.errors import InvalidRequest


async def multipart_form(
    request: Request, limit: int, too_large: Callable[[], Exception], param: str, max_fields: int
) -> FormData:
    """The request's multipart form, refused early when its declared length is already past ``limit``.

    Starlette spools file parts to disk past 1 MB, so an upload is never held whole in memory.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise too_large()
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except Exception as e:  # a malformed multipart body
        raise InvalidRequest(f"Could not parse the multipart form: {e}", param=param) from None
