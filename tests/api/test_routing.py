"""api/routing.py's RouteTable, indexed by a path's first two segments, finds the route the router's linear scan
does, for a path of every route of the app (each method, and methods no route has) and for paths of no route."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Match

from api.routing import RouteTable


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from api.server import build
    from tunery.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("routing"),
        demo_model=False,
        base_models={"m": "/nonexistent"},
        allow_open=True,
        dashboard=True,
    )
    app, shutdown = build(settings, role="api")
    yield app
    shutdown()


def linear(table: RouteTable, scope: dict[str, Any]) -> str | None:
    """The router's rule, route by route: the first full match, else the first partial one (its 405)."""
    found = None
    for route in table.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(route.path)
        if match is Match.PARTIAL and found is None:
            found = str(route.path)
    return found


def scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def test_the_index_finds_what_a_scan_of_every_route_finds(app: Any) -> None:
    table = RouteTable(app.routes)
    assert len(table.routes) > 50
    paths = {re.sub(r"\{[^}:]+(:path)?\}", lambda m: "a/b" if m.group(1) else "x1", str(r.path)) for r in table.routes}
    paths |= {"/", "/v1", "/v1/", "/v1/nothing", "/v1/files/x/y/z", "/health/x", "/dashboard/x/y", "/nothing/at/all"}
    checked = 0
    for path in sorted(paths):
        for method in ("GET", "POST", "DELETE", "PATCH", "BREW"):
            expected = linear(table, scope(method, path))
            assert table.template(scope(method, path)) == (expected or "unmatched"), (method, path)
            checked += expected is not None
    assert checked > 100  # most paths found their route


def test_no_request_fully_matches_two_routes(app: Any) -> None:
    """The routes' order decides nothing (api/app.py orders the modules for speed: the routes clients poll first)."""
    table = RouteTable(app.routes)
    paths = {re.sub(r"\{[^}:]+(:path)?\}", lambda m: "a/b" if m.group(1) else "x1", str(r.path)) for r in table.routes}
    paths |= {p.replace("x1", "dry_run") for p in paths} | {"/v1/fine_tuning/jobs/dry_run", "/v1/models/ft:a:b:c"}
    for path in sorted(paths):
        for method in ("GET", "POST", "DELETE"):
            full = [str(r.path) for r in table.routes if r.matches(scope(method, path))[0] is Match.FULL]
            assert len(full) <= 1, (method, path, full)


def test_the_polled_routes_come_first(app: Any) -> None:
    """/health, then api/app.py's POLLED in order: each names a route of the app (a renamed path fails here)."""
    from api.app import POLLED

    listed = [(sorted(getattr(r, "methods", None) or ()), getattr(r, "path", None)) for r in app.router.routes]
    front = [(methods, path) for methods, path in listed if path is not None and not path.startswith("/openapi")]
    front = [entry for entry in front if not entry[1].startswith("/docs") and not entry[1].startswith("/redoc")]
    assert front[0][1] == "/health"
    assert [(m[0], p) for m, p in front[1 : 1 + len(POLLED)]] == list(POLLED)
