"""``/v1/tunery/secrets`` over HTTP (Tunery's extension): a project's secrets, the values its jobs' integrations read
(docs/integrations.md). Only the project's owner and the organization's admin may call them (api/auth.py); no
answer holds a value; api/services/secrets.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import service_dependency
from api.errors import ERROR_RESPONSES
from api.protocol.secrets import ProjectSecret, ProjectSecretDeleted, ProjectSecretList, SetSecretRequest
from api.routing import API_PREFIX
from api.services.secrets import SecretService
from tunery.integrations import SecretName

router = APIRouter(prefix=f"{API_PREFIX}/tunery/secrets", responses=ERROR_RESPONSES)


secret_service = service_dependency(SecretService)


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
