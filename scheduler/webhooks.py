"""The webhook sender (docs/webhooks.md): a thread of the scheduler that sends the outbox's due deliveries
(tunery/webhooks.py), signed, while this replica leads, and records each attempt.

It runs beside the scheduler's loop, not in it, so a slow endpoint (up to TUNERY_WEBHOOK_TIMEOUT_SECONDS per attempt)
never holds up launching and watching runs. Each attempt checks the endpoint's URL again (its host may now resolve to
an address webhooks may not reach), never follows a redirect and ignores proxy variables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery.db import Database, WebhookDelivery, WebhookEndpoint
from tunery.settings import Settings
from tunery.webhooks import (
    DeliveryStatus,
    Outcome,
    RefusedURL,
    check_url,
    record_attempt,
    redeliver,
    signed_headers,
)

log = logging.getLogger("tunery.webhooks")

BATCH = 20  # deliveries taken per pass


@dataclass(frozen=True)
class Due:
    """A delivery to attempt, with what sending it needs."""

    id: str
    url: str
    secret: str
    payload: str
    next_attempt_at: float | None  # as read: a redelivery while the attempt is out moves it


class WebhookSender:
    def __init__(self, settings: Settings, db: Database, may_work: Callable[[], bool] = lambda: True):
        self.settings = settings
        self.db = db
        self.may_work = may_work
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.http = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhook-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)
        self.http.close()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.may_work():
                    self.send_due()
            except Exception:
                log.exception("webhook pass failed")
            self._wake.wait(self.settings.scheduler_poll_seconds)
            self._wake.clear()

    def due(self, now: float) -> list[Due]:
        with self.db.session() as s:
            rows = s.execute(
                select(
                    WebhookDelivery.id,
                    WebhookEndpoint.url,
                    WebhookEndpoint.secret,
                    WebhookDelivery.payload,
                    WebhookDelivery.next_attempt_at,
                )
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.status == DeliveryStatus.pending.value, WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.pk)
                .limit(BATCH)
            ).all()
        return [Due(*row) for row in rows]

    def send_due(self) -> int:
        """Attempt every delivery due now (a batch at a time, until none is due); returns how many were attempted."""
        sent = 0
        while not self._stop.is_set():
            batch = self.due(time.time())
            if not batch:
                return sent
            for d in batch:
                self.record(d, self.attempt(d))
                sent += 1
        return sent

    def attempt(self, d: Due) -> Outcome:
        """One signed POST of the delivery's body; 2xx is delivered, anything else (or no answer) is retried."""
        try:
            check_url(d.url, self.settings.webhooks_allow_private)
        except RefusedURL as e:
            return Outcome(error=str(e))
        body = d.payload.encode()
        try:
            r = self.http.post(d.url, content=body, headers=signed_headers(d.secret, d.id, body))
        except httpx.HTTPError as e:
            return Outcome(error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        return Outcome(status_code=r.status_code)

    def record(self, due: Due, outcome: Outcome) -> None:
        """Write the attempt's outcome. A delivery redelivered while its attempt was out stays due at the time the
        redelivery asked for; one whose endpoint was deleted meanwhile is gone."""
        settings = self.settings

        def work(s: Session) -> None:
            d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.id == due.id))
            if d is None:
                return
            requested = d.next_attempt_at
            record_attempt(
                d, outcome, time.time(), settings.webhook_retry_base_seconds, settings.webhook_retry_window_seconds
            )
            if requested is not None and requested != due.next_attempt_at:
                redeliver(d, requested)

        self.db.transaction(work)
