"""``GET /metrics``: Prometheus metrics of the API, the scheduler, trainer reports and the metadata store's state,
scraped from a real server after a real tiny job (docs/metrics.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TINY, chat_lines
from tunery.db import Database
from tunery.metrics import Metrics, StateCollector


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.mark.integration
def test_metrics_after_a_job(tiny_server_factory):
    srv = tiny_server_factory(api_keys="sk-metrics")
    sdk = srv.client.with_options(api_key="sk-metrics")
    data = chat_lines(12)
    f = sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")
    sdk.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=60)
    job = sdk.fine_tuning.jobs.create(model=TINY, training_file=f.id, hyperparameters={"n_epochs": 1, "batch_size": 4})
    deadline = time.monotonic() + 300
    while (done := sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, done.status
        time.sleep(0.3)
    assert done.status == "succeeded", done.error
    assert srv.http.get("/v1/no/such/route").status_code == 404

    # No API key needed (Prometheus scrapes without one), while the API itself still wants it.
    assert srv.http.get("/v1/files").status_code == 401
    r = srv.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = scrape(r.text)

    # HTTP: by route template, never by raw path (ids would multiply the series).
    assert value(m, "tunery_http_requests_total", method="POST", route="/v1/files", status="200") == 1
    assert value(m, "tunery_http_requests_total", method="POST", route="/v1/fine_tuning/jobs", status="200") == 1
    polls = value(m, "tunery_http_requests_total", method="GET", route="/v1/fine_tuning/jobs/{job_id}", status="200")
    assert polls is not None and polls >= 1
    assert value(m, "tunery_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(m, "tunery_http_requests_total", method="GET", route="/v1/files", status="401") == 1
    routes = {dict(labels).get("route", "") for (name, labels) in m if name == "tunery_http_requests_total"}
    assert not any(job.id in r or f.id in r for r in routes), routes
    count = value(m, "tunery_http_request_duration_seconds_count", method="POST", route="/v1/files")
    assert count == 1

    # The scheduler: one file validated, one run started, trainer reports, the tokens it trained.
    assert value(m, "tunery_file_validations_total", outcome="processed") == 1
    assert value(m, "tunery_file_validated_bytes_total") == len(data)
    assert value(m, "tunery_file_validation_duration_seconds_count") == 1
    assert value(m, "tunery_scheduler_runs_started_total") == 1
    assert value(m, "tunery_scheduler_leader") == 1
    assert (value(m, "tunery_scheduler_pass_duration_seconds_count") or 0) > 1
    assert value(m, "tunery_trainer_reports_total", kind="started") == 1
    assert value(m, "tunery_trainer_reports_total", kind="finished") == 1
    metrics_events = [e for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert value(m, "tunery_trainer_reports_total", kind="metrics") == len(metrics_events)
    assert value(m, "tunery_trained_tokens_total") == done.trained_tokens > 0

    # The metadata store's state, read at the scrape.
    assert value(m, "tunery_metadata_store_up") == 1
    assert value(m, "tunery_jobs", status="succeeded") == 1
    assert value(m, "tunery_jobs", status="queued") == 0 and value(m, "tunery_jobs", status="running") == 0
    # The training file, the job's results file and the eval reports (each checkpoint's, the final model's).
    n_checkpoints = len(sdk.fine_tuning.jobs.checkpoints.list(job.id).data)
    assert value(m, "tunery_files", status="processed") == 2 + n_checkpoints + 1
    # The run stays recorded until its process has exited and the scheduler has reaped it.
    deadline = time.monotonic() + 60
    while value(m, "tunery_runs_active") != 0:
        assert time.monotonic() < deadline, value(m, "tunery_runs_active")
        time.sleep(0.3)
        m = scrape(srv.http.get("/metrics").text)
    assert value(m, "tunery_queue_oldest_job_age_seconds") == 0

    # A job waiting to start shows in the queue's age; the gauges follow the store.
    held = tiny_server_factory(max_concurrent_runs=0, data_dir=srv.settings.data_dir.parent / "held")
    g = held.client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    held.client.files.wait_for_processing(g.id, poll_interval=0.1, max_wait_seconds=60)
    waiting = held.client.fine_tuning.jobs.create(model=TINY, training_file=g.id)
    held.wait_job(waiting.id, {"queued"}, timeout=60)
    m = scrape(held.http.get("/metrics").text)
    assert value(m, "tunery_jobs", status="queued") == 1
    age = value(m, "tunery_queue_oldest_job_age_seconds")
    assert age is not None and 0 <= age < 120


def test_metrics_can_be_turned_off(tiny_server_factory):
    srv = tiny_server_factory(metrics_enabled=False)
    assert srv.http.get("/metrics").status_code == 404
    assert srv.http.get("/health").status_code == 200


def test_scheduler_role_serves_metrics_and_state_only_while_leading(tmp_path: Path):
    from api.server import build
    from tunery.settings import Settings

    settings = Settings(data_dir=tmp_path, demo_model=False, grpc_port=0, scheduler_poll_seconds=0.2)
    app, shutdown = build(settings, role="scheduler")
    try:
        with TestClient(app) as http:
            assert http.get("/healthz").json() == {"status": "ok", "leader": True}
            m = scrape(http.get("/metrics").text)
            assert value(m, "tunery_jobs", status="queued") == 0 and value(m, "tunery_metadata_store_up") == 1
    finally:
        shutdown()

    # A replica that does not lead reports no store state (the leader does), so sums never count a job twice.
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    follower = Metrics()
    follower.watch_state(db, lambda: False)
    assert "tunery_jobs" not in follower.render().decode()
    leader = Metrics()
    leader.registry.register(StateCollector(db, lambda: True))
    assert 'tunery_jobs{status="queued"} 0.0' in leader.render().decode()
    # A store that does not answer is a 0, not a failed scrape.
    broken = Metrics()
    broken.watch_state(Database(f"sqlite:///{tmp_path / 'missing' / 'no.db'}"), lambda: True)
    out = scrape(broken.render().decode())
    assert value(out, "tunery_metadata_store_up") == 0
    db.engine.dispose()


def test_http_labels_come_from_closed_sets():
    """Whatever the method and path, the labels are a known method or `other`, and the route its resolver names."""
    from starlette.responses import PlainTextResponse

    from tunery.metrics import HTTP_METHODS, HTTPMetricsMiddleware

    metrics = Metrics()
    http = TestClient(HTTPMetricsMiddleware(PlainTextResponse("ok"), metrics, route_of=lambda scope: "/fixed"))
    for i in range(50):
        assert http.request(f"M{i}", f"/raw/{i}").status_code == 200
    for method in sorted(HTTP_METHODS):
        http.request(method, "/raw/x")
    m = scrape(metrics.render().decode())
    labels = {(dict(k)["method"], dict(k)["route"]) for name, k in m if name == "tunery_http_requests_total"}
    assert labels == {(x, "/fixed") for x in (*HTTP_METHODS, "other")}
    assert value(m, "tunery_http_requests_total", method="other", route="/fixed", status="200") == 50
