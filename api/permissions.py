"""``/v1/fine_tuning/checkpoints/{model}/permissions`` over HTTP: share a fine-tuned or checkpoint model with other
projects (OpenAI's checkpoint permissions); api/services/permissions.py does the rest."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request, Response

from api.auth import principal
from api.context import get_ctx, read_json
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.permissions import (
    CheckpointPermissionDeleted,
    CheckpointPermissionList,
    CreateCheckpointPermissionRequest,
    ListCheckpointPermissionsRequest,
)
from api.routing import API_PREFIX
from api.services.permissions import PermissionService

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)
PATH = "/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions"


async def permission_service(request: Request) -> PermissionService:
    ctx = get_ctx(request)
    return PermissionService(ctx, principal(request, ctx))


@router.post(PATH)
def create_permissions(
    fine_tuned_model_checkpoint: Name,
    body: CreateCheckpointPermissionRequest,
    svc: PermissionService = Depends(permission_service),
) -> CheckpointPermissionList:
    return svc.create(fine_tuned_model_checkpoint, body)


@router.get(PATH, response_model=CheckpointPermissionList)
async def list_permissions(
    fine_tuned_model_checkpoint: Name,
    after: str | None = None,
    limit: int = limit_param(10),
    order: Literal["ascending", "descending"] = "descending",
    project_id: str | None = None,
    svc: PermissionService = Depends(permission_service),
) -> Response:
    req = ListCheckpointPermissionsRequest(after=after, limit=limit, order=order, project_id=project_id)
    return await read_json(svc.ctx, svc.list, fine_tuned_model_checkpoint, req)


@router.delete(PATH + "/{permission_id}")
def delete_permission(
    fine_tuned_model_checkpoint: Name, permission_id: Name, svc: PermissionService = Depends(permission_service)
) -> CheckpointPermissionDeleted:
    return svc.delete(fine_tuned_model_checkpoint, permission_id)
