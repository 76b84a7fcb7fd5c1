"""Who the key of a request is (``GET /v1/tunery/me``, gRPC ``CallerService/GetCaller``): its organization, project
and role, and whether it may write. api/auth.py decides all of it; this says it, alike over both transports."""

from __future__ import annotations

from api.auth import Principal
from api.protocol.caller import Caller
from tunery.db.models import ADMIN_ROLE
from tunery.settings import Settings


def describe(p: Principal, settings: Settings) -> Caller:
    return Caller(
        organization_id=p.organization_id,
        project_id=p.tenant(settings).project_id,
        role=p.role,
        admin=p.role == ADMIN_ROLE,
        writes=p.writes,
        key_id=p.key_id,
        open_access=p.open_access,
    )
