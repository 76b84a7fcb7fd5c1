"""Webhook endpoints through the official SDK's ``client.webhooks`` (api/webhooks.py, docs/webhooks.md): a real
job's end reaches a real receiver, signed so that ``client.webhooks.unwrap`` verifies it; a 500 is retried and the
delivery log shows both attempts; a redelivery; the secret is shown once; URLs into the server's network are refused;
only a project's owner (and the admin) may manage them, and another project's endpoint is not found."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.webhooks import FineTuningJobCancelledWebhookEvent, FineTuningJobFailedWebhookEvent

from tests.conftest import TINY, RunningServer, chat_lines
from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tests.schema import validate
from tests.webhook_receiver import receiver
from tunery.webhooks import new_secret

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
W = "/v1/webhook_endpoints"
JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


def sdk(srv: RunningServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{srv.base_url}/v1", api_key=key, max_retries=0)


def test_a_cancelled_job_reaches_the_receiver_signed_retried_logged_and_redelivered(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(max_concurrent_runs=0, webhooks_allow_private=True, webhook_retry_base_seconds=0.05)
    client = srv.client
    with receiver([500]) as r:
        created = client.webhooks.create(name="ci", url=r.url, event_types=JOB_EVENTS)  # type: ignore[arg-type]
        secret = created.signing_secret
        assert created.id.startswith("whep_") and secret.startswith("whsec_")
        assert created.signing_secret_hint == f"whsec_...{secret[-4:]}"
        assert created.event_types == JOB_EVENTS and created.url == r.url and created.name == "ci"

        f = client.files.create(file=("t.jsonl", chat_lines(20)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
        client.fine_tuning.jobs.cancel(job.id)

        first, second = r.wait_for(2)  # a 500, then the retry's 200
        for got in (first, second):
            event = client.webhooks.unwrap(got.body, got.headers, secret=secret)
            assert isinstance(event, FineTuningJobCancelledWebhookEvent)
            assert event.data.id == job.id and event.type == "fine_tuning.job.cancelled"
            assert event.id.startswith("evt_") and event.object == "event"
            assert got.headers["content-type"] == "application/json" and got.path == "/hook"
        assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(first.body, first.headers, secret=new_secret())

        log = wait_delivered(srv, created.id, attempts=2)
        (d,) = log["data"]
        assert d["id"] == first.headers["webhook-id"] and d["event_id"] == json.loads(first.body)["id"]
        assert (d["event_type"], d["last_status_code"], d["last_error"], d["next_attempt_at"]) == (
            "fine_tuning.job.cancelled",
            200,
            None,
            None,
        )

        again = srv.http.post(f"{W}/{created.id}/deliveries/{d['id']}/redeliver")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "pending"
        third = r.wait_for(3)[2]
        assert third.body == first.body and third.headers["webhook-id"] == d["id"]
        assert isinstance(
            client.webhooks.unwrap(third.body, third.headers, secret=secret), FineTuningJobCancelledWebhookEvent
        )
        wait_delivered(srv, created.id, attempts=3)

    # The secret is never shown again: not by a retrieve, a list, an update.
    for answer in (
        srv.http.get(f"{W}/{created.id}"),
        srv.http.get(W),
        srv.http.post(f"{W}/{created.id}", json={"name": "renamed"}),
        srv.http.get(f"{W}/{created.id}/deliveries"),
    ):
        assert answer.status_code == 200, answer.text
        assert secret not in answer.text and secret[6:] not in answer.text and 'signing_secret"' not in answer.text
    got = client.webhooks.retrieve(created.id)
    assert got.name == "renamed" and not hasattr(got, "signing_secret")
    assert [e.id for e in client.webhooks.list()] == [created.id]
    deleted = client.webhooks.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "webhook_endpoint.deleted")
    assert list(client.webhooks.list()) == []
    assert srv.http.get(f"{W}/{created.id}/deliveries").status_code == 404


def test_a_job_the_scheduler_fails_reaches_an_endpoint_of_that_event_only(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(webhooks_allow_private=True)
    client = srv.client
    with receiver() as failed_only, receiver() as cancelled_only:
        hook = client.webhooks.create(name="f", url=failed_only.url, event_types=["fine_tuning.job.failed"])
        client.webhooks.create(name="c", url=cancelled_only.url, event_types=["fine_tuning.job.cancelled"])
        f = client.files.create(file=("t.jsonl", chat_lines(2)), purpose="fine-tune")  # too few examples
        job = client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
        (got,) = failed_only.wait_for(1)
        event = client.webhooks.unwrap(got.body, got.headers, secret=hook.signing_secret)
        assert isinstance(event, FineTuningJobFailedWebhookEvent) and event.data.id == job.id
        ended = client.fine_tuning.jobs.retrieve(job.id)
        assert ended.status == "failed" and ended.error.code == "invalid_n_examples"
        assert event.created_at == ended.finished_at
        wait_delivered(srv, hook.id, attempts=1)
        assert cancelled_only.requests == []


def wait_delivered(srv: RunningServer, endpoint_id: str, attempts: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        log = srv.http.get(f"{W}/{endpoint_id}/deliveries").json()
        d = log["data"][0] if log["data"] else {}
        if d.get("status") == "delivered" and d.get("attempts") == attempts:
            return log
        assert time.monotonic() < deadline, log
        time.sleep(0.1)


def test_an_endpoint_takes_the_job_events_by_default_and_refuses_others(server: RunningServer) -> None:
    # The embedded server refuses its own loopback address without TUNERY_WEBHOOKS_ALLOW_PRIVATE; 8.8.8.8 is public.
    made = server.http.post(W, json={"name": "x", "url": "https://8.8.8.8/hook"})
    assert made.status_code == 200, made.text
    assert made.json()["event_types"] == JOB_EVENTS
    bad = server.http.post(W, json={"name": "x", "url": "https://8.8.8.8/", "event_types": ["batch.completed"]})
    assert bad.status_code == 400
    assert (bad.json()["error"]["param"], bad.json()["error"]["code"]) == ("event_types", "invalid_event_type")
    tunerys = ["tunery.fine_tuning.job.checkpoint.created", "fine_tuning.job.failed"]
    extended = server.http.post(W, json={"name": "x", "url": "https://8.8.8.8/", "event_types": tunerys})
    assert extended.status_code == 200 and extended.json()["event_types"] == tunerys
    missing = server.http.post(W, json={"url": "https://8.8.8.8/"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "name"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "ftp://8.8.8.8/hook",
        "not a url",
    ],
)
def test_urls_into_the_servers_network_are_a_400_naming_url(server: RunningServer, url: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client.webhooks.create(name="x", url=url, event_types=JOB_EVENTS)  # type: ignore[arg-type]
    assert e.value.status_code == 400
    body = e.value.response.json()
    validate(body, "ErrorResponse")
    assert (body["error"]["param"], body["error"]["code"], body["error"]["type"]) == (
        "url",
        "invalid_url",
        "invalid_request_error",
    )
    made = server.http.post(W, json={"name": "x", "url": "https://8.8.8.8/"}).json()
    changed = server.http.post(f"{W}/{made['id']}", json={"url": url})
    assert changed.status_code == 400 and changed.json()["error"]["param"] == "url"


def test_only_owners_manage_endpoints_and_another_projects_are_not_found(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(api_keys=BOOTSTRAP, webhooks_allow_private=True)
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    keys: dict[str, str] = {}
    for name in ("A", "B"):
        project = srv.http.post("/v1/organization/projects", json={"name": name}, headers=admin).json()["id"]
        for role in ("owner", "member", "reader"):
            made = srv.http.post(
                f"/v1/organization/projects/{project}/service_accounts",
                json={"name": f"{name}-{role}", "role": role},
                headers=admin,
            )
            keys[f"{name}-{role}"] = made.json()["api_key"]["value"]
    a = sdk(srv, keys["A-owner"]).webhooks.create(name="a", url="http://127.0.0.1:9/hook", event_types=JOB_EVENTS)  # type: ignore[arg-type]
    never = "whep_" + "x" * 24
    tries = [
        ("GET", "{id}", None),
        ("POST", "{id}", {"name": "b"}),
        ("DELETE", "{id}", None),
        ("GET", "{id}/deliveries", None),
        ("POST", "{id}/deliveries/whdel_x/redeliver", None),
    ]
    b_owner = {"authorization": f"Bearer {keys['B-owner']}"}
    for method, path, body in tries:
        theirs = srv.http.request(method, f"{W}/" + path.format(id=a.id), json=body, headers=b_owner)
        unknown = srv.http.request(method, f"{W}/" + path.format(id=never), json=body, headers=b_owner)
        assert theirs.status_code == 404, (method, path, theirs.text)
        validate(theirs.json(), "ErrorResponse")
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "webhook_endpoint_not_found"
    assert srv.http.get(W, headers=b_owner).json()["data"] == []
    # A's members and readers may not read or write endpoints (their secrets, where the project's events go).
    for role in ("A-member", "A-reader"):
        h = {"authorization": f"Bearer {keys[role]}"}
        for method, path in (("GET", W), ("POST", W), ("GET", f"{W}/{a.id}"), ("GET", f"{W}/{a.id}/deliveries")):
            refused = srv.http.request(method, path, json={"name": "x", "url": "http://127.0.0.1:9/"}, headers=h)
            assert refused.status_code == 403, (role, method, path)
            assert "api.webhooks" in refused.json()["error"]["message"]
    # A's owner still has it, untouched.
    assert sdk(srv, keys["A-owner"]).webhooks.retrieve(a.id).name == "a"
    missing = srv.http.post(
        f"{W}/{a.id}/deliveries/whdel_x/redeliver", headers={"authorization": f"Bearer {keys['A-owner']}"}
    )
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "webhook_delivery_not_found")
