"""Who a request is (:class:`Principal`), and what its role lets it do: the one home of API keys and roles.

:func:`admit` decides both, once per request: the request guard (api/limits.py) calls it before any body is read and
keeps the answer in the request's scope; the ``tenant`` and ``principal`` dependencies take it from there (or call it
themselves, for an app without the guard).

* **Keys.** A key of ``TUNERY_API_KEYS`` is a bootstrap admin key of the default organization acting on the default
  project (``TUNERY_ORGANIZATION_ID``, ``TUNERY_PROJECT_ID``), as before tenancy. A key made through the admin API or
  ``tunery admin`` (tunery/tenancy.py) is looked up by the SHA-256 of its value; a revoked or expired one, or one of
  an archived project, is a 401 at its next request.
* **Open mode.** With no key configured and none ever issued from the store, every request is the default project's
  admin (the embedded mode, as before). From the first key the store issues on, a key is required: whether the store
  has issued keys is cached (:class:`tunery.tenancy.KeyRegistry`), a positive answer for good, a negative one for a
  second.
* **Roles.** ``admin`` (organization): everything, the administration API included. ``owner`` and ``member``
  (project): read and write on their project; an owner also manages its own project's service accounts and keys.
  ``reader``: GET routes and chat/completions only. Sharing a model (checkpoint permissions) is for a project's
  owner and the admin, and so are a project's webhook endpoints and its secrets (``/v1/tunery/secrets``). Anything
  else is a 403 with OpenAI's wording.

A missing or wrong key is a 401 with OpenAI's body: type ``invalid_request_error``, code ``null`` for a missing key
and ``invalid_api_key`` for a wrong one, the key masked in the message as OpenAI masks it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, Request

from api.context import AppContext, Tenant, get_ctx
from api.errors import INVALID_REQUEST, APIError, PermissionDenied
from tunery import audit
from tunery.db.models import ADMIN_ROLE
from tunery.settings import Settings
from tunery.tenancy import KeyRegistry, WouldBlock, find_key, note_use

PRINCIPAL_SCOPE_KEY = "tunery.principal"
ADMIN_PREFIX = "/v1/organization/"
# POSTs that change nothing: a reader may call them (inference, and graders, which read and store nothing).
READ_POSTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/fine_tuning/alpha/graders/run",
        "/v1/fine_tuning/alpha/graders/validate",
    }
)
# Routes only a project's owner (for its project's models) and the organization's admin may call: sharing models,
# a project's webhook endpoints (their secrets, where its events go) and its secrets (docs/integrations.md), with the
# scope a 403 names.
OWNER_ONLY_PREFIXES = {
    "/v1/fine_tuning/checkpoints/": "api.fine_tuning.checkpoints.permissions",
    "/v1/webhook_endpoints": "api.webhooks",
    "/v1/tunery/secrets": "api.tunery.secrets",
}
# Admin routes a project's owner may call for its own project ({project_id} in the path).
OWNER_ROUTES_PREFIXES = (
    "/v1/organization/projects/{project_id}/service_accounts",
    "/v1/organization/projects/{project_id}/api_keys",
)


@dataclass(frozen=True)
class Principal:
    """Who a request is: its organization, its project (None for an organization admin key), its role, the id of
    its stored key and that key's service account (None for a TUNERY_API_KEYS key and for open access), and whether
    it came in without a key because the server is open."""

    organization_id: str
    project_id: str | None
    role: str
    key_id: str | None = None
    service_account_id: str | None = None
    open_access: bool = False

    @property
    def writes(self) -> bool:
        """Whether the role may change its project's objects (a reader may only read, chat and grade)."""
        return self.role != "reader"

    @property
    def actor(self) -> audit.Actor:
        """Who the audit log says acted (tunery/audit.py): the services take it, never the request."""
        if self.key_id is not None:
            return audit.Actor.key(self.key_id, self.service_account_id)
        return audit.OPEN_ACCESS if self.open_access else audit.BOOTSTRAP

    def tenant(self, settings: Settings) -> Tenant:
        """The project the request acts on: the key's, or the default project for an admin."""
        return Tenant(self.organization_id, self.project_id or settings.project_id)


def masked(key: str) -> str:
    """``sk-abc***...wxyz``: enough to tell keys apart, never enough to use one."""
    return f"{key[:6]}***...{key[-4:]}" if len(key) > 16 else "***"


def _missing() -> APIError:
    return APIError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        type=INVALID_REQUEST,
        code=None,
    )


def identify(
    settings: Settings, registry: KeyRegistry | None, authorization: str | None, blocking: bool = True
) -> Principal:
    """The one rule of API keys (see the module): the request's principal, or the 401. ``blocking=False``: raise
    :class:`tunery.tenancy.WouldBlock` where the answer needs the metadata store (a stored key, a recheck)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    bootstrap = Principal(settings.organization_id, None, ADMIN_ROLE)
    # As bytes: compare_digest refuses str with non-ASCII characters, which a header may hold.
    if token and any(hmac.compare_digest(token.encode(), k.encode()) for k in settings.api_keys):
        return bootstrap
    stored = registry is not None and registry.issued(blocking)
    if not settings.api_keys and not stored:
        return Principal(settings.organization_id, None, ADMIN_ROLE, open_access=True)  # the embedded mode until keys
    if not token:
        raise _missing()
    if stored and registry is not None:
        if not blocking:
            raise WouldBlock("a stored key is looked up in the metadata store")
        with registry.db.session() as s:
            row = find_key(s, token)
            if row is not None:
                found = Principal(row.organization_id, row.project_id, row.role, row.id, row.service_account_id)
                key_id, last_used_at = row.id, row.last_used_at
        if row is not None:
            note_use(registry.db, key_id, last_used_at)  # at most one write a minute per key, off the event loop
            return found
    raise APIError(401, f"Incorrect API key provided: {masked(token)}.", type=INVALID_REQUEST, code="invalid_api_key")


def insufficient(scope: str) -> PermissionDenied:
    """OpenAI's words for a key whose role lacks a permission (with a 403, which the SDK raises as
    ``PermissionDeniedError``)."""
    return PermissionDenied(
        f"You have insufficient permissions for this operation. Missing scopes: {scope}. Check that you have the "
        "correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're "
        "using a restricted API key, that it has the necessary scopes."
    )


def authorize(principal: Principal, method: str, template: str, path_params: Mapping[str, Any]) -> None:
    """Raise the 403 unless ``principal``'s role allows ``method`` on the route ``template``."""
    if principal.role == ADMIN_ROLE:
        return
    if template.startswith(ADMIN_PREFIX):
        own = principal.role == "owner" and path_params.get("project_id") == principal.project_id
        if own and template.startswith(OWNER_ROUTES_PREFIXES):
            return
        raise insufficient("api.management.write" if method not in ("GET", "HEAD") else "api.management.read")
    for prefix, scope in OWNER_ONLY_PREFIXES.items():
        if template.startswith(prefix) and principal.role != "owner":
            raise insufficient(scope)
    if not principal.writes and method not in ("GET", "HEAD") and template not in READ_POSTS:
        raise insufficient("api.write")


def admit(
    settings: Settings,
    registry: KeyRegistry | None,
    authorization: str | None,
    method: str,
    template: str,
    path_params: Mapping[str, Any],
    blocking: bool = True,
) -> Principal:
    """Who the request is and whether its role lets it call this route: the principal, or the 401 or 403
    (``blocking``: see :func:`identify`)."""
    principal = identify(settings, registry, authorization, blocking)
    authorize(principal, method, template, path_params)
    return principal


def principal(request: Request, ctx: AppContext = Depends(get_ctx)) -> Principal:
    found: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if found is None:
        route = request.scope.get("route")
        template = str(getattr(route, "path", request.url.path))
        found = admit(
            ctx.settings,
            ctx.keys,
            request.headers.get("authorization"),
            request.method,
            template,
            request.path_params,
        )
        request.scope[PRINCIPAL_SCOPE_KEY] = found
    return found


def tenant(p: Principal = Depends(principal), ctx: AppContext = Depends(get_ctx)) -> Tenant:
    return p.tenant(ctx.settings)


def request_principal(request: Request, ctx: AppContext) -> Principal:
    """The principal of a request, for a dependency that runs on the event loop: the request guard has admitted the
    request already (api/limits.py), so this reads it from the scope without I/O."""
    return principal(request, ctx)


S = TypeVar("S")


def caller_service(request: Request, service: Callable[[AppContext, Tenant, audit.Actor], S]) -> S:
    """``service`` (a service class: the context, a tenant, who acts) for the request's caller, its project and
    actor. No I/O (see :func:`request_principal`): on the event loop."""
    ctx = get_ctx(request)
    p = request_principal(request, ctx)
    return service(ctx, p.tenant(ctx.settings), p.actor)


def service_dependency(service: Callable[[AppContext, Tenant, audit.Actor], S]) -> Callable[[Request], Awaitable[S]]:
    """A route's dependency (``Depends``) on :func:`caller_service`'s ``service``: a coroutine, so that FastAPI runs
    it on the event loop, not as a ``def`` dependency in its thread pool (a trip there and back per request). The
    routes clients poll (api/app.py's POLLED) call :func:`caller_service` themselves: a dependency costs a request
    FastAPI's whole solving of it (its parameters looked up, its callable's kind checked), about 6% of the API's CPU
    under load (bench/api_load.py)."""

    async def dependency(request: Request) -> S:
        return caller_service(request, service)

    return dependency


def request_tenant(request: Request, ctx: AppContext) -> Tenant:
    """The tenant of a request, for a dependency that runs on the event loop (see :func:`request_principal`)."""
    return request_principal(request, ctx).tenant(ctx.settings)
