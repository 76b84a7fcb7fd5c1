"""``GET /v1/tunery/me`` over HTTP (Tunery's extension): who the request's API key is, its project and role, and
whether it may write (api/services/caller.py; its gRPC twin is ``CallerService/GetCaller``). Every key may ask; the
dashboard asks once a sign-in, to offer only the actions the key may take."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import Principal, principal
from api.context import AppContext, get_ctx
from api.errors import ERROR_RESPONSES
from api.protocol.caller import Caller
from api.routing import API_PREFIX
from api.services.caller import describe

router = APIRouter(prefix=f"{API_PREFIX}/tunery", responses=ERROR_RESPONSES)


@router.get("/me")
async def me(p: Principal = Depends(principal), ctx: AppContext = Depends(get_ctx)) -> Caller:
    return describe(p, ctx.settings)
