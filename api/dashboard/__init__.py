"""The web dashboard (docs/dashboard.md): a few static files at ``/dashboard/`` that run in the browser and call the
public REST API (``/v1``) with the user's API key, as any other client does. Nothing here reads a job or a file: the
page holds no privilege of its own, and a server without the dashboard (``TUNERY_DASHBOARD=false``) answers 404.

The files ship inside the package (``api/dashboard/static``: HTML, one script, one stylesheet, no build step, nothing
from a CDN) and are served from memory with a strict Content-Security-Policy: scripts, styles and requests to this
origin only, no inline script, no framing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from api.errors import INVALID_REQUEST, APIError

STATIC = Path(__file__).parent / "static"
PREFIX = "/dashboard"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# What the page may do: its own script and stylesheet, requests to its own origin (the API), images it draws (inline
# SVG, data: URLs); nothing inline, no plugin, no frame, no form posted anywhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    # revalidated on every load (304 while unchanged): an upgraded server serves its own page at once
    "cache-control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(folder: Path = STATIC) -> dict[str, Asset]:
    """Every file of the dashboard, read once: the closed set of names it answers."""
    assets = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in TYPES:
            body = path.read_bytes()
            assets[path.name] = Asset(body, TYPES[path.suffix], f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return assets


def make_router() -> APIRouter:
    assets = load_assets()
    router = APIRouter(include_in_schema=False)

    def answer(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise APIError(404, f"The dashboard has no file {name!r}.", type=INVALID_REQUEST, code="not_found")
        headers = {**SECURITY_HEADERS, "etag": asset.etag}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @router.get(PREFIX)
    async def dashboard_root() -> RedirectResponse:
        # relative, so that it holds behind a proxy that serves the API under a path of its own
        return RedirectResponse("dashboard/", status_code=308, headers=SECURITY_HEADERS)

    @router.get(PREFIX + "/")
    async def dashboard_index(request: Request) -> Response:
        return answer(request, "index.html")

    @router.get(PREFIX + "/{name}")
    async def dashboard_asset(request: Request, name: str) -> Response:
        return answer(request, name)

    return router
