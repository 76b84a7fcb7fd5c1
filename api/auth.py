"""API keys -> (organization, project). The embedded mode accepts any key until keys are configured.

A missing or wrong key is a 401 with OpenAI's body: type ``invalid_request_error``, code ``null`` for a missing key
and ``invalid_api_key`` for a wrong one, the key masked in the message as OpenAI masks it.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from api.context import AppContext, Tenant, get_ctx
from api.errors import INVALID_REQUEST, APIError


def masked(key: str) -> str:
    """``sk-abc***...wxyz``: enough to tell keys apart, never enough to use one."""
    return f"{key[:6]}***...{key[-4:]}" if len(key) > 16 else "***"


def authenticate(keys: list[str], authorization: str | None) -> None:
    """The one rule of API keys: with keys configured, ``authorization`` must be ``Bearer <one of them>``; raises the
    401 otherwise. The request guard (api/limits.py) applies it before a body is read, the ``tenant`` dependency
    again to every route that serves a tenant."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using "
            "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            type=INVALID_REQUEST,
            code=None,
        )
    # As bytes: compare_digest refuses str with non-ASCII characters, which a header may hold.
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise APIError(
            401, f"Incorrect API key provided: {masked(token)}.", type=INVALID_REQUEST, code="invalid_api_key"
        )


def tenant(request: Request, ctx: AppContext = Depends(get_ctx)) -> Tenant:
    authenticate(ctx.settings.api_keys, request.headers.get("authorization"))
    return Tenant(ctx.settings.organization_id, ctx.settings.project_id)
