"""How the dashboard's files are served (docs/dashboard.md): without a key, with a strict Content-Security-Policy,
from a closed set of names, and not at all with TUNERY_DASHBOARD=false. No browser here: tests/e2e/test_dashboard.py
has one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.dashboard import CSP
from api.server import build
from tunery.settings import Settings

KEY = "sk-dashboard-test-key-0123456789"


@pytest.fixture
def client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    enabled = getattr(request, "param", True)
    settings = Settings(
        data_dir=tmp_path, demo_model=False, base_models={"m": "/nonexistent"}, api_keys=[KEY], dashboard=enabled
    )
    app, shutdown = build(settings)
    try:
        yield TestClient(app)
    finally:
        shutdown()


def test_the_files_are_served_with_a_strict_policy_and_without_a_key(client: TestClient) -> None:
    moved = client.get("/dashboard", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "dashboard/"  # relative: holds behind a proxy
    page = client.get("/dashboard/")  # no key: the page itself is public, the API it calls is not
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "script-src 'self';" in CSP and "unsafe" not in CSP
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert '<script src="app.js" defer></script>' in page.text and "<script>" not in page.text  # nothing inline
    assert " style=" not in page.text
    script = client.get("/dashboard/app.js")
    assert script.headers["content-type"].startswith("text/javascript") and "fetch(" in script.text
    assert script.headers["content-security-policy"] == CSP
    # no CDN, no other origin: the one absolute URL is SVG's namespace
    assert set(re.findall(r"\w+://[^\"' ]+", script.text + page.text)) == {"http://www.w3.org/2000/svg"}
    assert client.get("/dashboard/app.js", headers={"if-none-match": script.headers["etag"]}).status_code == 304
    assert client.get("/dashboard/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/dashboard/favicon.svg").headers["content-type"] == "image/svg+xml"
    missing = client.get("/dashboard/secrets.json")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/dashboard/..%2F__init__.py").status_code == 404
    assert client.get("/dashboard/__init__.py").status_code == 404
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert "/dashboard/" not in client.get("/openapi.json").json()["paths"]  # not part of the API


@pytest.mark.parametrize("client", [False], indirect=True)
def test_the_dashboard_can_be_turned_off(client: TestClient) -> None:
    assert client.get("/dashboard/").status_code == 404
    assert client.get("/dashboard/app.js").status_code == 404
    assert client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
