"""API keys -> (organization, project). The embedded mode accepts any key until keys are configured."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from api.context import AppContext, Tenant, get_ctx
from api.errors import AUTHENTICATION, APIError


def tenant(request: Request, ctx: AppContext = Depends(get_ctx)) -> Tenant:
    keys = ctx.settings.api_keys
    if keys:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                type=AUTHENTICATION,
                code="missing_api_key",
            )
        if not any(hmac.compare_digest(token.strip(), k) for k in keys):
            raise APIError(401, "Incorrect API key provided.", type=AUTHENTICATION, code="invalid_api_key")
    return Tenant(ctx.settings.organization_id, ctx.settings.project_id)
