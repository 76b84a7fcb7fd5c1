"""``/v1/tunery/exports`` over HTTP (Tunery's extension, docs/exports.md): an existing ``ft:`` model or checkpoint
model merged into its base as one downloadable file, as a short job of its own. Readers may read them; members,
owners and the admin may create and cancel them (api/auth.py's rule for any write). api/services/exports.py does the
rest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.auth import service_dependency
from api.context import read_json
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.exports import CreateExportRequest, Export, ExportList, ListExportsRequest
from api.routing import API_PREFIX
from api.services.exports import ExportService

router = APIRouter(prefix=f"{API_PREFIX}/tunery/exports", responses=ERROR_RESPONSES)


export_service = service_dependency(ExportService)


@router.post("")
def create_export(body: CreateExportRequest, svc: ExportService = Depends(export_service)) -> Export:
    return svc.create(body)


@router.get("", response_model=ExportList)
async def list_exports(
    after: str | None = None, limit: int = limit_param(20), svc: ExportService = Depends(export_service)
) -> Response:
    return await read_json(svc.ctx, svc.list, ListExportsRequest(after=after, limit=limit))


@router.get("/{export_id}", response_model=Export)
async def retrieve_export(export_id: Name, svc: ExportService = Depends(export_service)) -> Response:
    return await read_json(svc.ctx, svc.retrieve, export_id)


@router.post("/{export_id}/cancel")
def cancel_export(export_id: Name, svc: ExportService = Depends(export_service)) -> Export:
    return svc.cancel(export_id)
