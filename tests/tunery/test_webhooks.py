"""tunery/webhooks.py: the signature the official SDK verifies, the retry schedule, the refused URLs, and the outbox
written in the transaction of a job's end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.webhooks import FineTuningJobCancelledWebhookEvent, FineTuningJobSucceededWebhookEvent
from sqlalchemy import func, select

from tunery import ids, jobstate, webhooks
from tunery.db import Checkpoint, Database, Job, WebhookDelivery, WebhookEndpoint
from tunery.jobstate import JobKind, JobStatus
from tunery.webhooks import DeliveryStatus, EventType, Outcome, RefusedURL

SDK = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


def test_a_signed_event_is_unwrapped_by_the_official_sdk() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    body = webhooks.envelope("evt_abc", EventType.job_succeeded, 1719168000, {"id": "ftjob-abc"}).encode()
    headers = webhooks.signed_headers(secret, "whdel_1", body)
    event = SDK.webhooks.unwrap(body, headers, secret=secret)
    assert isinstance(event, FineTuningJobSucceededWebhookEvent)
    assert (event.id, event.type, event.created_at, event.data.id, event.object) == (
        "evt_abc",
        "fine_tuning.job.succeeded",
        1719168000,
        "ftjob-abc",
        "event",
    )
    assert json.loads(body) == {
        "id": "evt_abc",
        "object": "event",
        "created_at": 1719168000,
        "type": "fine_tuning.job.succeeded",
        "data": {"id": "ftjob-abc"},
    }
    # Another secret, a changed body or a stale timestamp: refused.
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body, headers, secret=webhooks.new_secret())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body.replace(b"abc", b"abd"), headers, secret=secret)
    old = webhooks.signed_headers(secret, "whdel_1", body, timestamp=int(time.time()) - 3600)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(body, old, secret=secret)


def test_the_hint_never_holds_the_secret() -> None:
    secret = webhooks.new_secret()
    hint = webhooks.secret_hint(secret)
    assert hint.startswith("whsec_...") and len(hint) == len("whsec_...") + 4
    assert secret[6:-4] not in hint


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://224.0.0.1/hook",
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(RefusedURL, match="TUNERY_WEBHOOKS_ALLOW_PRIVATE"):
        webhooks.check_url(url, allow_private=False)
    if "fe80" not in url and "224." not in url:  # resolvable here, any address allowed with the setting
        webhooks.check_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://8.8.8.8/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///hook", "names no host"),
        ("http://user:pw@8.8.8.8/hook", "credentials"),
        ("http://8.8.8.8:99999/hook", "Invalid URL"),
        ("http://no-such-host.invalid/hook", "cannot be resolved"),
    ],
)
def test_other_urls_are_refused_whatever_the_setting(url: str, why: str) -> None:
    for allow in (False, True):
        with pytest.raises(RefusedURL, match=why):
            webhooks.check_url(url, allow_private=allow)


def test_a_public_address_is_accepted() -> None:
    webhooks.check_url("https://8.8.8.8/hook", allow_private=False)
    webhooks.check_url("http://[2001:4860:4860::8888]:8443/hook", allow_private=False)


def _delivery() -> WebhookDelivery:
    return WebhookDelivery(attempts=0, status=DeliveryStatus.pending.value, next_attempt_at=0.0)


def test_failed_attempts_back_off_for_at_least_the_window_then_fail() -> None:
    d = _delivery()
    t0 = 1_000_000.0
    at, delays = t0, []
    while d.status == DeliveryStatus.pending.value:
        webhooks.record_attempt(d, Outcome(status_code=500), at, base_seconds=5, window_seconds=86400)
        if d.next_attempt_at is not None:
            delays.append(d.next_attempt_at - at)
            at = d.next_attempt_at
    assert delays[:7] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert d.status == DeliveryStatus.failed.value and d.next_attempt_at is None
    assert at - t0 >= 86400  # the last attempt is a day or more after the first
    assert d.attempts == len(delays) + 1 == 8
    assert (d.last_status_code, d.last_error) == (500, "HTTP 500")


def test_a_2xx_delivers_and_a_redelivery_opens_a_fresh_window() -> None:
    d = _delivery()
    webhooks.record_attempt(d, Outcome(error="ConnectError: refused"), 100.0, base_seconds=1, window_seconds=10)
    assert (d.status, d.next_attempt_at, d.last_status_code, d.last_error) == (
        "pending",
        101.0,
        None,
        "ConnectError: refused",
    )
    webhooks.record_attempt(d, Outcome(status_code=204), 101.0, base_seconds=1, window_seconds=10)
    assert (d.status, d.delivered_at, d.attempts, d.last_error, d.next_attempt_at) == ("delivered", 101, 2, None, None)
    webhooks.redeliver(d, 500.0)
    assert (d.status, d.next_attempt_at, d.retry_until) == ("pending", 500.0, None)
    webhooks.record_attempt(d, Outcome(status_code=500), 500.0, base_seconds=1, window_seconds=10)
    assert d.status == "pending" and d.retry_until == 510.0


# ---- the outbox --------------------------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    database.upgrade()
    yield database
    database.engine.dispose()


def _endpoint(project: str, types: list[str]) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=ids.webhook_endpoint_id(),
        organization_id="org-default",
        project_id=project,
        name="n",
        url="http://8.8.8.8/hook",
        event_types=types,
        secret=webhooks.new_secret(),
        created_at=1,
        updated_at=1,
    )


def _job(project: str, kind: JobKind = JobKind.fine_tune) -> Job:
    job = Job(
        id=ids.job_id(),
        kind=kind.value,
        organization_id="org-default",
        project_id=project,
        created_at=1,
        model="m",
        base_model="m",
        training_file="file-x",
        seed=1,
        method={"type": "supervised"},
        hyperparameters={},
    )
    jobstate.create(job)
    return job


def _deliveries(db: Database) -> list[WebhookDelivery]:
    with db.session() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.pk)))


def test_a_jobs_end_writes_one_delivery_per_subscribed_endpoint_of_its_project(db: Database) -> None:
    every = [t.value for t in webhooks.DEFAULT_EVENT_TYPES]
    with db.session() as s:
        mine, only_failed = _endpoint("proj_a", every), _endpoint("proj_a", ["fine_tuning.job.failed"])
        theirs = _endpoint("proj_b", every)
        s.add_all([mine, only_failed, theirs])
        job, evaluation = _job("proj_a"), _job("proj_a", JobKind.evaluation)
        s.add_all([job, evaluation])
    assert _deliveries(db) == []  # a new job, and a job that moves on but does not end: no event

    def cancel(s, job_id: str) -> None:  # type: ignore[no-untyped-def]
        j = s.scalar(select(Job).where(Job.id == job_id))
        jobstate.queue(j)
        s.flush()
        jobstate.cancel(j, 1234)

    db.transaction(lambda s: cancel(s, job.id))
    db.transaction(lambda s: cancel(s, evaluation.id))  # not a fine-tuning job: not OpenAI's event
    rows = _deliveries(db)
    assert [(r.endpoint_id, r.event_type, r.status, r.attempts) for r in rows] == [
        (mine.id, "fine_tuning.job.cancelled", "pending", 0)
    ]
    body = rows[0].payload.encode()
    parsed = SDK.webhooks.unwrap(body, webhooks.signed_headers(mine.secret, rows[0].id, body), secret=mine.secret)
    assert isinstance(parsed, FineTuningJobCancelledWebhookEvent)
    assert (parsed.id, parsed.data.id, parsed.created_at) == (rows[0].event_id, job.id, 1234)
    assert rows[0].event_id.startswith("evt_") and rows[0].next_attempt_at == 1234.0


def test_the_deliveries_go_with_the_transition_or_not_at_all(db: Database) -> None:
    with db.session() as s:
        s.add(_endpoint("proj_a", [t.value for t in webhooks.DEFAULT_EVENT_TYPES]))
        job = _job("proj_a")
        jobstate.queue(job)
        s.add(job)

    class Died(Exception):
        pass

    def fail_then_die(s) -> None:  # type: ignore[no-untyped-def]
        j = s.scalar(select(Job).where(Job.id == job.id))
        jobstate.fail(j, _error(), 99)
        s.flush()  # the job's row and its deliveries are written ...
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
        raise Died  # ... and the transaction never commits

    with pytest.raises(Died):
        db.transaction(fail_then_die)
    with db.session() as s:
        assert s.scalar(select(Job.status).where(Job.id == job.id)) == JobStatus.queued
    assert _deliveries(db) == []
    db.transaction(lambda s: jobstate.fail(s.scalar(select(Job).where(Job.id == job.id)), _error(), 99))
    assert [(r.event_type, r.created_at) for r in _deliveries(db)] == [("fine_tuning.job.failed", 99)]


def _error() -> jobstate.JobError:
    return jobstate.JobError(jobstate.ErrorCode.training_error, "boom")


def test_a_job_stored_already_ended_has_its_event_too(db: Database) -> None:
    with db.session() as s:
        s.add(_endpoint("proj_a", ["fine_tuning.job.succeeded"]))
        s.flush()
        job = _job("proj_a")
        jobstate.queue(job)
        jobstate.succeed(job, 7)
        s.add(job)
    assert [(r.event_type, r.created_at) for r in _deliveries(db)] == [("fine_tuning.job.succeeded", 7)]


def test_a_checkpoint_is_tunerys_event_for_the_endpoints_that_ask_for_it(db: Database) -> None:
    with db.session() as s:
        asking = _endpoint("proj_a", ["tunery.fine_tuning.job.checkpoint.created"])
        s.add_all([asking, _endpoint("proj_a", [t.value for t in webhooks.DEFAULT_EVENT_TYPES])])
        job = _job("proj_a")
        s.add(job)
    with db.session() as s:
        s.add(
            Checkpoint(
                id="ftckpt_abc",
                job_id=job.id,
                created_at=55,
                step_number=10,
                metrics={},
                fine_tuned_model_checkpoint="ft:m:o::x:ckpt-step-10",
                object_prefix="jobs/x/checkpoints/step-10",
            )
        )
    (row,) = _deliveries(db)
    assert (row.endpoint_id, row.event_type, row.created_at) == (
        asking.id,
        "tunery.fine_tuning.job.checkpoint.created",
        55,
    )
    body = row.payload.encode()
    SDK.webhooks.verify_signature(body, webhooks.signed_headers(asking.secret, row.id, body), secret=asking.secret)
    assert json.loads(body) == {
        "id": row.event_id,
        "object": "event",
        "created_at": 55,
        "type": "tunery.fine_tuning.job.checkpoint.created",
        "data": {"id": "ftckpt_abc", "fine_tuning_job_id": job.id},
    }


def test_a_gated_jobs_end_is_also_tunerys_gate_event(db: Database) -> None:
    gate_events = ["tunery.fine_tuning.job.eval_gate.passed", "tunery.fine_tuning.job.eval_gate.failed"]
    with db.session() as s:
        s.add(_endpoint("proj_a", [*gate_events, "fine_tuning.job.failed"]))
        jobs = [_job("proj_a") for _ in range(4)]
        for job in jobs[:3]:
            job.extensions = {"tunery": {"eval": {"gate": {"max_forgetting": 0.05}}}}
        for job in jobs:
            jobstate.queue(job)
        s.add_all(jobs)
    passed, failed, other_failure, ungated = (j.id for j in jobs)

    def end(job_id: str, how: str) -> None:
        def apply(s) -> None:  # type: ignore[no-untyped-def]
            j = s.scalar(select(Job).where(Job.id == job_id))
            if how == "succeed":
                jobstate.succeed(j, 5)
            else:
                code = jobstate.ErrorCode.eval_gate_failed if how == "gate" else jobstate.ErrorCode.training_error
                jobstate.fail(j, jobstate.JobError(code, "no model passed"), 5)

        db.transaction(apply)

    end(passed, "succeed")
    end(failed, "gate")
    end(other_failure, "other")  # failed, but not by its gate: OpenAI's event only
    end(ungated, "gate")
    got = [(json.loads(r.payload)["data"]["id"], r.event_type) for r in _deliveries(db)]
    assert got == [
        (passed, "tunery.fine_tuning.job.eval_gate.passed"),
        (failed, "fine_tuning.job.failed"),
        (failed, "tunery.fine_tuning.job.eval_gate.failed"),
        (other_failure, "fine_tuning.job.failed"),
        (ungated, "fine_tuning.job.failed"),
    ]
