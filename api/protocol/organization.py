"""The administration API (``/v1/organization/...``), as OpenAI's has it: projects, their service accounts and API
keys, and the organization's admin API keys (the SDK's ``client.admin.organization``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from api.protocol.base import CursorPage, OpenAIRequest, OpenAIResponse, TuneryExtension, omitted

ProjectName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
# Seconds until a key expires: at most ten years.
ExpiresIn = Annotated[int, Field(ge=1, le=10 * 366 * 86400)]


class ProjectLimits(OpenAIResponse):
    """A project's limits in force (docs/tenancy.md, "Quotas and fair scheduling"): its own where set, else the
    ``TUNERY_PROJECT_*`` defaults; 0 is unlimited."""

    max_concurrent_jobs: int
    gpu_quota: int
    max_stored_bytes: int
    requests_per_minute: int


class ProjectTunery(OpenAIResponse):
    limits: ProjectLimits


class Project(OpenAIResponse):
    """OpenAI's ``Project``, and Tunery's ``tunery.limits``."""

    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str
    created_at: int
    archived_at: int | None = None
    status: Literal["active", "archived"]
    tunery: ProjectTunery


Limit = Annotated[int, Field(ge=0, le=2**31 - 1)]  # an INTEGER column
ByteLimit = Annotated[int, Field(ge=0, le=2**62)]  # a BIGINT column


class ProjectLimitsUpdate(TuneryExtension):
    """``tunery.limits`` of a project's create or modify: a number sets the project's own limit (0: unlimited),
    null gives it the ``TUNERY_PROJECT_*`` default again, a field left out is kept."""

    max_concurrent_jobs: Limit | None = None
    gpu_quota: Limit | None = None
    max_stored_bytes: ByteLimit | None = None
    requests_per_minute: Limit | None = None


class ProjectTuneryUpdate(TuneryExtension):
    limits: ProjectLimitsUpdate | None = None


class ProjectList(CursorPage[Project]):
    """OpenAI's ``ProjectListResponse``."""


class ProjectCreate(OpenAIRequest):
    name: ProjectName
    tunery: ProjectTuneryUpdate | None = None  # not in the OpenAI spec


class ProjectUpdate(OpenAIRequest):
    """A new name (required by OpenAI, optional here), and Tunery's ``tunery.limits``."""

    name: ProjectName | None = None
    tunery: ProjectTuneryUpdate | None = None  # not in the OpenAI spec


class ServiceAccount(OpenAIResponse):
    """OpenAI's ``ProjectServiceAccount``: ``role`` is ``owner`` or ``member``, or Tunery's ``reader``."""

    id: str
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    name: str
    role: str
    created_at: int


class ServiceAccountList(CursorPage[ServiceAccount]):
    """OpenAI's ``ProjectServiceAccountListResponse``."""


class ServiceAccountCreate(OpenAIRequest):
    name: ProjectName
    expires_in_seconds: ExpiresIn | None = None
    # --8<-- [start:service-account-extra-params]  not in the OpenAI spec
    # The account's project role (OpenAI makes every service account a member): owner, member or reader.
    role: Literal["owner", "member", "reader"] = "member"
    # --8<-- [end:service-account-extra-params]


class ServiceAccountUpdate(OpenAIRequest):
    """A new name or role (OpenAI's ``owner`` or ``member``, or Tunery's ``reader``); the account's key takes the
    role at once."""

    name: ProjectName | None = None
    role: Literal["owner", "member", "reader"] | None = None


class ServiceAccountApiKey(OpenAIResponse):
    """The key made with a service account: its ``value`` is shown here, once, and never again."""

    id: str
    object: Literal["organization.project.service_account.api_key"] = "organization.project.service_account.api_key"
    name: str
    value: str
    created_at: int
    expires_at: int | None = None


class ServiceAccountCreated(ServiceAccount):
    """OpenAI's ``ProjectServiceAccountCreateResponse``."""

    api_key: ServiceAccountApiKey


class ServiceAccountDeleted(OpenAIResponse):
    id: str
    object: Literal["organization.project.service_account.deleted"] = "organization.project.service_account.deleted"
    deleted: bool


class KeyOwnerServiceAccount(OpenAIResponse):
    id: str
    name: str
    role: str
    created_at: int


class ProjectApiKeyOwner(OpenAIResponse):
    type: Literal["service_account"] = "service_account"
    service_account: KeyOwnerServiceAccount


class ProjectApiKey(OpenAIResponse):
    """OpenAI's ``ProjectApiKey``: never the key's value, only ``redacted_value``."""

    id: str
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    name: str
    redacted_value: str
    created_at: int
    last_used_at: int | None = None
    expires_at: int | None = None
    owner: ProjectApiKeyOwner
    owner_project_access: Literal["active", "inactive"] = "active"


class ProjectApiKeyList(CursorPage[ProjectApiKey]):
    """OpenAI's ``ProjectApiKeyListResponse``."""


class ProjectApiKeyDeleted(OpenAIResponse):
    id: str
    object: Literal["organization.project.api_key.deleted"] = "organization.project.api_key.deleted"
    deleted: bool


class AdminKeyOwner(OpenAIResponse):
    """Who holds an admin key: Tunery has no users, so the organization itself."""

    type: Literal["organization"] = "organization"
    id: str
    role: Literal["owner"] = "owner"


class AdminApiKey(OpenAIResponse):
    """OpenAI's ``AdminApiKey``; ``value`` only in the answer that creates it."""

    id: str
    object: Literal["organization.admin_api_key"] = "organization.admin_api_key"
    name: str
    redacted_value: str
    value: str | None = omitted("The key itself: only in the answer that creates it.")
    created_at: int
    last_used_at: int | None = None
    expires_at: int | None = None
    owner: AdminKeyOwner


class AdminApiKeyList(CursorPage[AdminApiKey]):
    """OpenAI's ``ApiKeyList``."""


class AdminApiKeyCreate(OpenAIRequest):
    name: ProjectName
    expires_in_seconds: ExpiresIn | None = None


class AdminApiKeyDeleted(OpenAIResponse):
    id: str
    object: Literal["organization.admin_api_key.deleted"] = "organization.admin_api_key.deleted"
    deleted: bool
