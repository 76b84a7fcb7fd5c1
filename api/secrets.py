"""``/v1/tunery/secrets`` over HTTP (Tunery's extension): a project's secrets, the values its jobs' integrations read
(docs/integrations.md). Only the project's owner and the organization's admin may call them (api/auth.py); no
answer holds a value; api/services/secrets.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import request_principal
from api.context import get_ctx
from api.errors import ERROR_RESPONSES
from api.protocol.secrets import ProjectSecret, ProjectSecretDeleted, ProjectSecretList, SetSecretRequest
from api.routing import API_PREFIX
from api.services.secrets import SecretService
from tunery.integrations import SecretName

router = APIRouter(prefix=f"{API_PREFIX}/tunery/secrets", responses=ERROR_RESPONSES)


async def secret_service(request: Request) -> SecretService:
    """The caller's project's secrets (on the event loop: the request guard admitted the caller already)."""
    ctx = get_ctx(request)
    p = request_principal(request, ctx)
    return SecretService(ctx, p.tenant(ctx.settings), p.actor)


Svc = Depends(secret_service)


@router.get("")
def list_secrets(svc: SecretService = Svc) -> ProjectSecretList:
    """The project's secrets: names and dates, never values."""
    return svc.list()


@router.post("/{name}")
def set_secret(name: SecretName, body: SetSecretRequest, svc: SecretService = Svc) -> ProjectSecret:
    """Set a secret (``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``,
    ``MLFLOW_TRACKING_PASSWORD``); the answer names it, without its value."""
    return svc.set(name, body.value)


@router.delete("/{name}")
def delete_secret(name: SecretName, svc: SecretService = Svc) -> ProjectSecretDeleted:
    return svc.delete(name)
