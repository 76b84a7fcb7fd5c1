"""Webhooks (docs/webhooks.md): the events, OpenAI's envelope, the Standard Webhooks signature the official SDK's
``client.webhooks.unwrap`` verifies, the retry schedule, which endpoint URLs are refused (SSRF), and the outbox.

The outbox: a job's terminal transition (tunery/jobstate.py ``succeed``, ``fail``, ``cancel``) writes one
``webhook_deliveries`` row per subscribed endpoint of the job's project **in the same transaction** as the job's new
status (:func:`record_events`, run at every flush of the metadata store's sessions), so an event is never lost to a
process that dies between the two; a checkpoint's row, likewise. The scheduler's leader sends them
(scheduler/webhooks.py).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from tunery import ids
from tunery.db.models import Checkpoint, Job, WebhookDelivery, WebhookEndpoint
from tunery.evalreport import EVAL_GATE_FAILED
from tunery.jobstate import JobKind, JobStatus


class EventType(enum.StrEnum):
    """The events an endpoint may subscribe to: OpenAI's three of a fine-tuning job's end, and Tunery's extensions
    (``tunery.`` types, only when subscribed to): a checkpoint saved; a gated job's end (``tunery.eval.gate``,
    docs/evals.md) that says whether its model passed the gate, beside OpenAI's event of that end."""

    job_succeeded = "fine_tuning.job.succeeded"
    job_failed = "fine_tuning.job.failed"
    job_cancelled = "fine_tuning.job.cancelled"
    checkpoint_created = "tunery.fine_tuning.job.checkpoint.created"
    eval_gate_passed = "tunery.fine_tuning.job.eval_gate.passed"
    eval_gate_failed = "tunery.fine_tuning.job.eval_gate.failed"


# What an endpoint created without ``event_types`` takes.
DEFAULT_EVENT_TYPES = (EventType.job_succeeded, EventType.job_failed, EventType.job_cancelled)
# The event of each terminal status of a fine-tuning job.
JOB_EVENTS: dict[str, EventType] = {
    JobStatus.succeeded.value: EventType.job_succeeded,
    JobStatus.failed.value: EventType.job_failed,
    JobStatus.cancelled.value: EventType.job_cancelled,
}


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # to be sent at ``next_attempt_at``
    delivered = "delivered"  # the endpoint answered 2xx
    failed = "failed"  # no 2xx within the retry window (a redelivery makes it pending again)


SECRET_PREFIX = "whsec_"
MAX_ERROR_LENGTH = 500


def new_secret() -> str:
    """A signing secret as OpenAI writes them: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What the API shows of a secret after its creation: enough to tell two apart, never enough to sign."""
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``, keyed by the secret's bytes
    (the base64 after ``whsec_``): what openai's ``webhooks.verify_signature`` recomputes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers of one attempt: ``webhook-id`` (the delivery's id, the same at every attempt, so a receiver can
    drop a repeat), ``webhook-timestamp`` (now: the SDK refuses one more than 5 minutes off) and
    ``webhook-signature``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "user-agent": "Tunery-Webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(secret, message_id, ts, body),
    }


def envelope(event_id: str, event_type: EventType, created_at: int, data: Mapping[str, str]) -> str:
    """OpenAI's event object, as the body every attempt sends: ``{"id": "evt_…", "object": "event", "created_at",
    "type", "data": {"id": <the job's id>}}`` (a checkpoint's event: its ``ftckpt_…`` id and ``fine_tuning_job_id``)."""
    event = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type.value}
    return json.dumps({**event, "data": dict(data)}, separators=(",", ":"))


# The delays between attempts, in units of TUNERY_WEBHOOK_RETRY_BASE_SECONDS (5 s: 5 s, 5 min, 30 min, 2 h, 5 h, then
# 10 h until the window is over).
BACKOFF = (1, 60, 360, 1440, 3600, 7200)


def retry_delay(attempts: int, base_seconds: float) -> float:
    """The wait after the ``attempts``-th failed attempt (1 for the first)."""
    return BACKOFF[min(attempts, len(BACKOFF)) - 1] * base_seconds


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: the endpoint's HTTP status (None when none came back) or what went wrong."""

    status_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def record_attempt(d: WebhookDelivery, outcome: Outcome, at: float, base_seconds: float, window_seconds: float) -> None:
    """Write one attempt's outcome on its delivery: delivered on a 2xx; otherwise retried after its backoff, or
    failed once the attempt was at or past the end of the retry window (so a delivery is tried for at least the
    window after its first attempt)."""
    if d.retry_until is None:
        d.retry_until = at + window_seconds
    d.attempts += 1
    d.last_attempt_at = int(at)
    d.last_status_code = outcome.status_code
    d.last_error = None if outcome.ok else (outcome.error or f"HTTP {outcome.status_code}")[:MAX_ERROR_LENGTH]
    d.next_attempt_at = None
    if outcome.ok:
        d.status = DeliveryStatus.delivered.value
        d.delivered_at = int(at)
    elif at >= d.retry_until:
        d.status = DeliveryStatus.failed.value
    else:
        d.status = DeliveryStatus.pending.value
        d.next_attempt_at = at + retry_delay(d.attempts, base_seconds)


def redeliver(d: WebhookDelivery, at: float) -> None:
    """Send the delivery again now, whatever it became: pending, with a fresh retry window from its next attempt."""
    d.status = DeliveryStatus.pending.value
    d.next_attempt_at = at
    d.retry_until = None


# ---- which URLs an endpoint may have (SSRF) --------------------------------------------------------------------------
class RefusedURL(ValueError):
    """An endpoint URL Tunery will not send to; the message says why."""


def _refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if mapped is not None:
        return _refused_address(mapped)
    for what, test in (
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("an unspecified", ip.is_unspecified),
        ("a multicast", ip.is_multicast),
        ("a private or reserved", not ip.is_global),
    ):
        if test:
            return what
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an address literal: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_url(
    url: str,
    allow_private: bool,
    *,
    what: str = "a webhook endpoint",
    setting: str = "TUNERY_WEBHOOKS_ALLOW_PRIVATE",
) -> None:
    """Raise :class:`RefusedURL` unless ``url`` is an http(s) URL whose host resolves, and (unless ``allow_private``,
    the ``setting``: TUNERY_WEBHOOKS_ALLOW_PRIVATE for webhooks) only to public addresses: never loopback,
    link-local (the cloud metadata service at 169.254.169.254), unspecified, multicast, private or reserved. Checked
    at creation and before every attempt (a name may come to resolve elsewhere). ``what`` names the URL in the
    messages (an MLflow tracking URI: tunery/integrations.py)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise RefusedURL(f"Invalid URL `{url}`: {e}.") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"Invalid URL `{url}`: {what} is an http or https URL.")
    host = parts.hostname
    if not host:
        raise RefusedURL(f"Invalid URL `{url}`: it names no host.")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL(f"Invalid URL `{url}`: credentials in the URL are not accepted.")
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        raise RefusedURL(f"Invalid URL `{url}`: the host `{host}` cannot be resolved.") from None
    if allow_private:
        return
    for address in addresses:
        refused = _refused_address(ipaddress.ip_address(address.split("%", 1)[0]))
        if refused is not None:
            raise RefusedURL(
                f"Invalid URL `{url}`: `{host}` resolves to {refused} address ({address}), which {what} may not "
                f"name ({setting} allows it)."
            )


# ---- the outbox ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """An event of a project, to be written to the outbox."""

    organization_id: str
    project_id: str
    type: EventType
    data: Mapping[str, str]
    created_at: int


def _job_of(s: Session, job_id: str) -> Job | None:
    """The job, from this session (it may not be flushed yet) or the store."""
    for obj in s:
        if isinstance(obj, Job) and obj.id == job_id:
            return obj
    with s.no_autoflush:
        return s.scalar(select(Job).where(Job.id == job_id))


def gate_event(job: Job) -> EventType | None:
    """The gate's event of a gated fine-tuning job that just ended: passed when it succeeded (its model is the best
    that passed), failed when it failed with ``eval_gate_failed`` (no model passed); none otherwise (no gate, or an
    end that the gate did not decide: cancelled, another failure)."""
    if not job.tunery_options("eval").get("gate"):
        return None
    if job.status == JobStatus.succeeded:
        return EventType.eval_gate_passed
    if job.status == JobStatus.failed and (job.error or {}).get("code") == EVAL_GATE_FAILED:
        return EventType.eval_gate_failed
    return None


def _events(s: Session) -> Iterable[Event]:
    """The events of this flush: a fine-tuning job whose status became terminal (a job added already ended too: it
    has no status before), a checkpoint added to a fine-tuning job."""
    for obj in [*s.new, *s.dirty]:
        if isinstance(obj, Job) and obj.kind == JobKind.fine_tune:
            history = inspect(obj).attrs.status.history
            event = JOB_EVENTS.get(history.added[0]) if history.added else None
            if event is not None and list(history.deleted) != list(history.added):
                at = obj.finished_at or int(time.time())
                yield Event(obj.organization_id, obj.project_id, event, {"id": obj.id}, at)
                gate = gate_event(obj)
                if gate is not None:
                    yield Event(obj.organization_id, obj.project_id, gate, {"id": obj.id}, at)
        elif isinstance(obj, Checkpoint) and obj in s.new:
            job = _job_of(s, obj.job_id)
            if job is not None and job.kind == JobKind.fine_tune:
                data = {"id": obj.id, "fine_tuning_job_id": job.id}
                yield Event(job.organization_id, job.project_id, EventType.checkpoint_created, data, obj.created_at)


def event_deliveries(s: Session, event: Event) -> list[WebhookDelivery]:
    """Add one pending delivery of a new event to each endpoint of its project subscribed to its type (in ``s``'s
    transaction); the rows added."""
    event_id = ids.webhook_event_id()
    body = envelope(event_id, event.type, event.created_at, event.data)
    with s.no_autoflush:
        endpoints = s.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.organization_id == event.organization_id,
                WebhookEndpoint.project_id == event.project_id,
            )
        ).all()
    rows = []
    for endpoint in endpoints:
        if event.type.value not in endpoint.event_types:
            continue
        row = WebhookDelivery(
            id=ids.webhook_delivery_id(),
            organization_id=event.organization_id,
            project_id=event.project_id,
            endpoint_id=endpoint.id,
            event_id=event_id,
            event_type=event.type.value,
            payload=body,
            status=DeliveryStatus.pending.value,
            attempts=0,
            next_attempt_at=float(event.created_at),
            created_at=event.created_at,
        )
        s.add(row)
        rows.append(row)
    return rows


def record_events(s: Session, _flush_context: Any, _instances: Any) -> None:
    """The ``before_flush`` hook of every session of the metadata store (tunery/db ``Database``): the events of this
    flush (a fine-tuning job that reaches succeeded, failed or cancelled; a checkpoint saved) get their deliveries in
    the same transaction."""
    for event in list(_events(s)):
        event_deliveries(s, event)
