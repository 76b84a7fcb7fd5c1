"""``/v1/tunery/aliases`` over HTTP (Tunery's extension, docs/aliases.md): a project's stable names for its models.
Readers may read them; members, owners and the admin may change them (api/auth.py's rule for any write).
api/services/aliases.py does the rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.auth import service_dependency
from api.context import read_json
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.aliases import (
    Alias,
    AliasDeleted,
    AliasList,
    AliasVersionList,
    CreateAliasRequest,
    ListAliasesRequest,
    ListAliasVersionsRequest,
    RollbackAliasRequest,
    UpdateAliasRequest,
)
from api.protocol.base import Name
from api.routing import API_PREFIX
from api.services.aliases import AliasService

router = APIRouter(prefix=f"{API_PREFIX}/tunery/aliases", responses=ERROR_RESPONSES)


alias_service = service_dependency(AliasService)


@router.post("")
def create_alias(body: CreateAliasRequest, svc: AliasService = Depends(alias_service)) -> Alias:
    return svc.create(body)


@router.get("", response_model=AliasList)
async def list_aliases(
    after: str | None = None, limit: int = limit_param(20), svc: AliasService = Depends(alias_service)
) -> Response:
    return await read_json(svc.ctx, svc.list, ListAliasesRequest(after=after, limit=limit))


@router.get("/{name}", response_model=Alias)
async def retrieve_alias(name: Name, svc: AliasService = Depends(alias_service)) -> Response:
    return await read_json(svc.ctx, svc.retrieve, name)


@router.post("/{name}")
def update_alias(name: Name, body: UpdateAliasRequest, svc: AliasService = Depends(alias_service)) -> Alias:
    """Re-point the alias: one call, recorded as a new version."""
    return svc.update(name, body)


@router.delete("/{name}")
def delete_alias(name: Name, svc: AliasService = Depends(alias_service)) -> AliasDeleted:
    return svc.delete(name)


@router.get("/{name}/history", response_model=AliasVersionList)
async def alias_history(
    name: Name, after: str | None = None, limit: int = limit_param(20), svc: AliasService = Depends(alias_service)
) -> Response:
    return await read_json(svc.ctx, svc.history, name, ListAliasVersionsRequest(after=after, limit=limit))


@router.post("/{name}/rollback")
def rollback_alias(
    name: Name, body: RollbackAliasRequest | None = None, svc: AliasService = Depends(alias_service)
) -> Alias:
    """Point the alias at its previous model again (or at version ``to_version``'s): a new version."""
    return svc.rollback(name, body or RollbackAliasRequest(to_version=None, note=None))
