"""``/v1/organization/...`` over HTTP: the administration API (api/services/organization.py does the work).

Who may call it is decided before the route runs (api/auth.py ``authorize``): an admin key, or a project's owner for
its own project's service accounts and API keys; any other key gets a 403.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query

from api.auth import Principal, principal
from api.context import AppContext, get_ctx
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.organization import (
    AdminApiKey,
    AdminApiKeyCreate,
    AdminApiKeyDeleted,
    AdminApiKeyList,
    Project,
    ProjectApiKey,
    ProjectApiKeyDeleted,
    ProjectApiKeyList,
    ProjectCreate,
    ProjectList,
    ProjectUpdate,
    ServiceAccount,
    ServiceAccountCreate,
    ServiceAccountCreated,
    ServiceAccountDeleted,
    ServiceAccountList,
    ServiceAccountUpdate,
)
from api.routing import API_PREFIX
from api.services.organization import OrganizationService

router = APIRouter(prefix=f"{API_PREFIX}/organization", responses=ERROR_RESPONSES)


def organization_service(ctx: AppContext = Depends(get_ctx), p: Principal = Depends(principal)) -> OrganizationService:
    return OrganizationService(ctx, p.organization_id, p.actor)


Svc = Depends(organization_service)


@router.get("/projects")
def list_projects(
    after: str | None = None,
    limit: int = limit_param(20),
    include_archived: bool = Query(False),
    svc: OrganizationService = Svc,
) -> ProjectList:
    return svc.list_projects(after=after, limit=limit, include_archived=include_archived)


@router.post("/projects")
def create_project(req: ProjectCreate, svc: OrganizationService = Svc) -> Project:
    return svc.create_project(req)


@router.get("/projects/{project_id}")
def retrieve_project(project_id: Name, svc: OrganizationService = Svc) -> Project:
    return svc.retrieve_project(project_id)


@router.post("/projects/{project_id}")
def modify_project(project_id: Name, req: ProjectUpdate, svc: OrganizationService = Svc) -> Project:
    return svc.modify_project(project_id, req)


@router.post("/projects/{project_id}/archive")
def archive_project(project_id: Name, svc: OrganizationService = Svc) -> Project:
    return svc.archive_project(project_id)


@router.get("/projects/{project_id}/service_accounts")
def list_service_accounts(
    project_id: Name, after: str | None = None, limit: int = limit_param(20), svc: OrganizationService = Svc
) -> ServiceAccountList:
    return svc.list_service_accounts(project_id, after=after, limit=limit)


@router.post("/projects/{project_id}/service_accounts")
def create_service_account(
    project_id: Name, req: ServiceAccountCreate, svc: OrganizationService = Svc
) -> ServiceAccountCreated:
    return svc.create_service_account(project_id, req)


@router.get("/projects/{project_id}/service_accounts/{service_account_id}")
def retrieve_service_account(
    project_id: Name, service_account_id: Name, svc: OrganizationService = Svc
) -> ServiceAccount:
    return svc.retrieve_service_account(project_id, service_account_id)


@router.post("/projects/{project_id}/service_accounts/{service_account_id}")
def modify_service_account(
    project_id: Name, service_account_id: Name, req: ServiceAccountUpdate, svc: OrganizationService = Svc
) -> ServiceAccount:
    return svc.modify_service_account(project_id, service_account_id, req)


@router.delete("/projects/{project_id}/service_accounts/{service_account_id}")
def delete_service_account(
    project_id: Name, service_account_id: Name, svc: OrganizationService = Svc
) -> ServiceAccountDeleted:
    return svc.delete_service_account(project_id, service_account_id)


@router.get("/projects/{project_id}/api_keys")
def list_project_api_keys(
    project_id: Name, after: str | None = None, limit: int = limit_param(20), svc: OrganizationService = Svc
) -> ProjectApiKeyList:
    return svc.list_project_keys(project_id, after=after, limit=limit)


@router.get("/projects/{project_id}/api_keys/{key_id}")
def retrieve_project_api_key(project_id: Name, key_id: Name, svc: OrganizationService = Svc) -> ProjectApiKey:
    return svc.retrieve_project_key(project_id, key_id)


@router.delete("/projects/{project_id}/api_keys/{key_id}")
def delete_project_api_key(project_id: Name, key_id: Name, svc: OrganizationService = Svc) -> ProjectApiKeyDeleted:
    return svc.delete_project_key(project_id, key_id)


@router.get("/admin_api_keys")
def list_admin_api_keys(
    after: str | None = None,
    limit: int = limit_param(20),
    order: Literal["asc", "desc"] = "asc",
    svc: OrganizationService = Svc,
) -> AdminApiKeyList:
    return svc.list_admin_keys(after=after, limit=limit, order=order)


@router.post("/admin_api_keys")
def create_admin_api_key(req: AdminApiKeyCreate, svc: OrganizationService = Svc) -> AdminApiKey:
    return svc.create_admin_key(req)


@router.get("/admin_api_keys/{key_id}")
def retrieve_admin_api_key(key_id: Name, svc: OrganizationService = Svc) -> AdminApiKey:
    return svc.retrieve_admin_key(key_id)


@router.delete("/admin_api_keys/{key_id}")
def delete_admin_api_key(key_id: Name, svc: OrganizationService = Svc) -> AdminApiKeyDeleted:
    return svc.delete_admin_key(key_id)
