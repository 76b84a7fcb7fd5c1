"""Request rate limits per project, as OpenAI answers them (docs/tenancy.md, "Quotas and fair scheduling").

Each project has a token bucket of ``requests_per_minute`` tokens (its own limit, or
``TUNERY_PROJECT_REQUESTS_PER_MINUTE``; 0: unlimited) that refills continuously, ``requests_per_minute / 60`` a
second: a project may send a minute's requests in a burst, then one every ``60 / requests_per_minute`` seconds. The
request guard (api/limits.py) takes a token for every ``/v1`` request once it has admitted its key, before the body
is read; the administration API (``/v1/organization/...``) is not counted, so an administrator can always raise a
limit. Past the limit the answer is OpenAI's 429 (``type: requests``, ``code: rate_limit_exceeded``) with
``retry-after`` (and ``retry-after-ms``, which the SDK prefers) saying when the next token is there; every answer of
a limited project carries ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests`` and
``x-ratelimit-reset-requests`` (the time until the bucket is full again, written as OpenAI does: ``1s``, ``6m0s``).

The buckets live in the API process: with several API replicas each one counts its own requests, so a project may
send up to ``replicas x requests_per_minute``. A project's limit is read from the metadata store at most once a
second per process, so a change through the administration API holds within a second.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from api.errors import APIError
from tunery.db import Database
from tunery.quotas import project_limits
from tunery.settings import Settings
from tunery.tenancy import Rechecked

RECHECK_SECONDS = 1.0


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``120ms``, ``1s``, ``6m0s``, ``1h0m0s``."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class _Bucket:
    capacity: int
    tokens: float
    updated: float


@dataclass(frozen=True)
class Verdict:
    """One request's turn: the project's limit, the tokens left, the seconds until the bucket is full, and (refused)
    the seconds until the next token."""

    limit: int
    remaining: int
    reset_seconds: float
    retry_after: float | None = None

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": duration(self.reset_seconds),
        }

    def refusal(self, project_id: str) -> APIError:
        wait = self.retry_after or 0.0
        return APIError(
            429,
            f"Rate limit reached for requests in project {project_id} on requests per min (RPM): Limit {self.limit}, "
            f"Used {self.limit}, Requested 1. Please try again in {duration(wait)}.",
            type="requests",
            code="rate_limit_exceeded",
            headers={
                **self.headers(),
                "retry-after": str(max(math.ceil(wait), 1)),
                "retry-after-ms": str(max(math.ceil(wait * 1000), 1)),
            },
        )


class RateLimiter:
    """The token buckets of this process's projects. Thread-safe; :meth:`take` may read the store (run it off the
    event loop). ``clock`` is ``time.monotonic``; a test may move it."""

    def __init__(self, settings: Settings, db: Database, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.db = db
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._limits: dict[str, Rechecked[int]] = {}  # project -> its requests per minute, read again each recheck
        self._lock = threading.Lock()

    def limit_of(self, project_id: str, blocking: bool = True) -> int:
        """The project's requests per minute (0: none), read again every RECHECK_SECONDS; ``blocking=False``: raise
        :class:`WouldBlock` rather than read the store, once a recheck (:class:`Rechecked`)."""
        limit = self._limits.get(project_id)
        if limit is None:
            limit = self._limits.setdefault(
                project_id,
                Rechecked(lambda: self._read_limit(project_id), RECHECK_SECONDS, f"the request limit of {project_id}"),
            )
        return limit.get(blocking)

    def _read_limit(self, project_id: str) -> int:
        with self.db.session() as s:
            return project_limits(s, self.settings, project_id).requests_per_minute

    def take(self, project_id: str, blocking: bool = True) -> Verdict | None:
        """Take one token of the project's bucket: the verdict (``retry_after`` set when there was none), or None when
        the project has no limit. ``blocking=False``: :class:`WouldBlock` (nothing taken) if the limit is to be read."""
        rpm = self.limit_of(project_id, blocking)
        if not rpm:
            return None
        rate = rpm / 60.0
        with self._lock:
            at = self.clock()
            b = self._buckets.get(project_id)
            if b is None:
                b = self._buckets[project_id] = _Bucket(rpm, float(rpm), at)
            b.tokens = min(float(rpm), b.tokens + max(at - b.updated, 0.0) * rate)
            b.capacity, b.updated = rpm, at
            if b.tokens < 1:
                return Verdict(rpm, 0, (rpm - b.tokens) / rate, retry_after=(1 - b.tokens) / rate)
            b.tokens -= 1
            return Verdict(rpm, math.floor(b.tokens), (rpm - b.tokens) / rate)
