"""Hostile requests a real server must shrug off (issue 11): series in /metrics a client cannot multiply."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer
from tunery.metrics import HTTP_METHODS

KEY = "sk-hardening-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}


def http_series(srv: RunningServer) -> list[dict[str, str]]:
    text = srv.http.get("/metrics").text
    return [
        s.labels
        for family in text_string_to_metric_families(text)
        if family.name == "tunery_http_requests"
        for s in family.samples
        if s.name == "tunery_http_requests_total"
    ]


# -- /metrics: labels from a closed set -----------------------------------------------------------------------------


def test_hostile_requests_add_no_metric_series(tiny_server_factory):
    srv = tiny_server_factory(api_keys=KEY)
    assert srv.http.get("/health").status_code == 200
    before = len(http_series(srv))
    for i in range(300):
        assert srv.http.request(f"M{i}", "/health").status_code == 405
        assert srv.http.get(f"/v1/models/x{i}/y/z").status_code == 401
        assert srv.http.get(f"/v1/models/ft:x{i}", headers=AUTH).status_code == 404
        assert srv.http.request(f"X{i}", f"/nowhere/{i}").status_code == 404
    series = http_series(srv)
    # 4 x 300 distinct requests: 4 new series (one per kind), and the scrapes'.
    assert len(series) <= before + 5, sorted(map(str, series))
    labels = {(s["method"], s["route"], s["status"]) for s in series}
    assert {
        ("other", "/health", "405"),
        ("GET", "/v1/models/{model:path}", "401"),
        ("GET", "/v1/models/{model:path}", "404"),
        ("other", "unmatched", "404"),
    } <= labels
    assert {s["method"] for s in series} <= HTTP_METHODS | {"other"}
    assert {s["route"] for s in series} <= {"/v1/models/{model:path}", "/health", "/metrics", "unmatched"}
