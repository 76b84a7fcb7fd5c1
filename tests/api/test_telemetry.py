"""FastAPI's native OpenTelemetry (api/app.py's ``_telemetry``): on for a signal whose global provider is configured
when the app is built, a span per request; off otherwise, without a look at the providers per request."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api import app as app_module
from api.app import create_app
from api.context import AppContext
from tunery.db import Database
from tunery.settings import Settings
from tunery.storage import LocalObjectStore


def _app(tmp_path: Path) -> TestClient:
    db = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    db.upgrade()
    settings = Settings(data_dir=tmp_path, probe_port=-1, api_grpc_port=-1, demo_model=False, allow_open=True)
    return TestClient(create_app(AppContext(settings, db, LocalObjectStore(tmp_path / "objects"))))


def test_without_a_configured_provider_no_signal_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    assert app_module._telemetry() == {"tracing": False, "metrics": False, "logs": False}
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")  # FastAPI configures them at start: its defaults
    assert app_module._telemetry() == {}


def test_a_provider_configured_before_the_app_gets_a_span_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # as opentelemetry-instrument sets it
    with _app(tmp_path) as client:
        assert client.get("/v1/models").status_code == 200
    assert any("/v1/models" in s.name for s in spans.get_finished_spans())


def test_unconfigured_the_providers_are_not_asked_per_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    with _app(tmp_path) as client:
        asked: list[str] = []
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: asked.append("tracer") or trace.ProxyTracerProvider())
        for _ in range(3):
            assert client.get("/v1/models").status_code == 200
    assert asked == []
