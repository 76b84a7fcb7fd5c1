"""scheduler/webhooks.py: the sender posts the outbox's due deliveries, signed, to a real receiver; retries with
backoff until a 2xx or the end of the window; never follows a redirect; checks the URL again at each attempt."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.webhooks import FineTuningJobSucceededWebhookEvent
from sqlalchemy import select

from scheduler.webhooks import WebhookSender
from tests.webhook_receiver import receiver
from tunery import ids, webhooks
from tunery.db import Database, WebhookDelivery, WebhookEndpoint
from tunery.settings import Settings
from tunery.webhooks import EventType

SDK = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    database.upgrade()
    yield database
    database.engine.dispose()


def sender(db: Database, tmp_path: Path, **overrides: Any) -> WebhookSender:
    options: dict[str, Any] = {"webhooks_allow_private": True, "webhook_retry_base_seconds": 0.05, **overrides}
    return WebhookSender(Settings(data_dir=tmp_path, **options), db)


def outbox(db: Database, url: str) -> tuple[WebhookEndpoint, WebhookDelivery]:
    """An endpoint at ``url`` and one due delivery of a job's success to it."""
    now = int(time.time())
    with db.session() as s:
        e = WebhookEndpoint(
            id=ids.webhook_endpoint_id(),
            organization_id="org-default",
            project_id="proj_default",
            name="hook",
            url=url,
            event_types=[t.value for t in webhooks.DEFAULT_EVENT_TYPES],
            secret=webhooks.new_secret(),
            created_at=now,
            updated_at=now,
        )
        s.add(e)
        s.flush()
        event = webhooks.Event("org-default", "proj_default", EventType.job_succeeded, {"id": "ftjob-x"}, now)
        (d,) = webhooks.event_deliveries(s, event)
    return e, d


def reread(db: Database, delivery_id: str) -> WebhookDelivery:
    with db.session() as s:
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
        assert d is not None
        return d


def send_until(sender: WebhookSender, db: Database, delivery_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while reread(db, delivery_id).status != status:
        assert time.monotonic() < deadline, reread(db, delivery_id).status
        sender.send_due()
        time.sleep(0.02)


def test_a_500_is_retried_and_both_attempts_verify(db: Database, tmp_path: Path) -> None:
    with receiver([500]) as r:
        e, d = outbox(db, r.url)
        s = sender(db, tmp_path)
        assert s.send_due() == 1
        first = reread(db, d.id)
        assert (first.status, first.attempts, first.last_status_code, first.last_error) == (
            "pending",
            1,
            500,
            "HTTP 500",
        )
        assert first.next_attempt_at is not None and first.next_attempt_at > time.time() - 1
        send_until(s, db, d.id, "delivered")
        got = r.wait_for(2)
        s.http.close()
    done = reread(db, d.id)
    assert (done.attempts, done.last_status_code, done.last_error) == (2, 200, None)
    assert done.delivered_at is not None
    for req in got:
        assert req.headers["webhook-id"] == d.id  # the same message at every attempt
        event = SDK.webhooks.unwrap(req.body, req.headers, secret=e.secret)
        assert isinstance(event, FineTuningJobSucceededWebhookEvent)
        assert (event.id, event.data.id) == (d.event_id, "ftjob-x")


def test_a_delivery_that_never_succeeds_fails_after_its_window(db: Database, tmp_path: Path) -> None:
    with receiver([500] * 100) as r:
        _, d = outbox(db, r.url)
        s = sender(db, tmp_path, webhook_retry_window_seconds=0.3, webhook_retry_base_seconds=0.01)
        send_until(s, db, d.id, "failed")
        s.http.close()
    gone = reread(db, d.id)
    assert gone.attempts >= 2 and gone.next_attempt_at is None and gone.last_status_code == 500
    assert len(r.requests) == gone.attempts


def test_a_redirect_is_not_followed(db: Database, tmp_path: Path) -> None:
    with receiver() as target:
        with receiver(redirect_to=target.url) as redirecting:
            _, d = outbox(db, redirecting.url)
            s = sender(db, tmp_path)
            s.send_due()
            s.http.close()
            assert len(redirecting.requests) == 1
        assert target.requests == []
    after = reread(db, d.id)
    assert (after.status, after.last_status_code) == ("pending", 302)


def test_each_attempt_checks_the_url_again(db: Database, tmp_path: Path) -> None:
    with receiver() as r:
        _, d = outbox(db, r.url)
        s = sender(db, tmp_path, webhooks_allow_private=False)
        s.send_due()
        s.http.close()
        assert r.requests == []
    refused = reread(db, d.id)
    assert refused.status == "pending" and refused.last_status_code is None
    assert "loopback" in (refused.last_error or "")


def test_an_unreachable_endpoint_is_an_attempt_with_its_error(db: Database, tmp_path: Path) -> None:
    with receiver() as r:
        url = r.url
    _, d = outbox(db, url)  # nothing listens there any more
    s = sender(db, tmp_path)
    s.send_due()
    s.http.close()
    after = reread(db, d.id)
    assert after.status == "pending" and after.attempts == 1 and "ConnectError" in (after.last_error or "")


def test_a_redelivery_during_an_attempt_is_kept(db: Database, tmp_path: Path) -> None:
    with receiver() as r:
        _, d = outbox(db, r.url)
        s = sender(db, tmp_path)
        (due,) = s.due(time.time())
        outcome = s.attempt(due)
        asked = time.time() + 60
        db.transaction(lambda session: webhooks.redeliver(session.get(WebhookDelivery, d.pk), asked))
        s.record(due, outcome)
        s.http.close()
    after = reread(db, d.id)
    assert (after.status, after.attempts, after.last_status_code, after.next_attempt_at) == ("pending", 1, 200, asked)
