"""Identifiers in OpenAI's formats: ``file-…``, ``upload_…``, ``part_…``, ``ftjob-…``, ``ft-event-…``, ``ftckpt_…``
and ``ft:`` model names.

Ids are looked up as stored, never parsed by their prefix, so ids written by earlier releases (``ftevent-…``,
``ftckpt-…``) keep resolving.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
# Request ids' generator, seeded from the system's randomness, again in a forked child; its own, so that a library
# seeding the global one (a chat request's seed) does not repeat request ids.
_requests = random.Random()
os.register_at_fork(after_in_child=_requests.seed)


_USABLE = 256 - 256 % len(_ALPHABET)  # bytes at or past this would favour the alphabet's first letters


def _random(n: int) -> str:
    """``n`` letters and digits, uniform, from one read of the system's randomness (``secrets.choice`` per letter
    makes a system call each: 24 of them per id, a request id for every request, a measurable share of the API's
    time under load)."""
    out: list[str] = []
    while len(out) < n:
        out += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(n + n // 4 + 2) if b < _USABLE]
    return "".join(out[:n])


def evaluation_id() -> str:
    """An on-demand evaluation (a job of kind ``evaluation``, tunery.jobstate.JobKind)."""
    return f"evaljob-{_random(24)}"


def export_id() -> str:
    """A merged-model export (a job of kind ``export``, tunery.jobstate.JobKind)."""
    return f"exportjob-{_random(24)}"


def file_id() -> str:
    return f"file-{_random(24)}"


def upload_id() -> str:
    return f"upload_{_random(24)}"


def part_id() -> str:
    return f"part_{_random(24)}"


def job_id() -> str:
    return f"ftjob-{_random(24)}"


def event_id() -> str:
    return f"ft-event-{_random(24)}"


def checkpoint_permission_id() -> str:
    return f"cp_{_random(24)}"


def alias_id() -> str:
    return f"alias_{_random(24)}"


def alias_version_id() -> str:
    return f"aliasver_{_random(24)}"


def checkpoint_id() -> str:
    return f"ftckpt_{_random(24)}"


def project_id() -> str:
    return f"proj_{_random(24)}"


def service_account_id() -> str:
    return f"svc_acct_{_random(24)}"


def api_key_id() -> str:
    return f"key_{_random(24)}"


def reservation_id() -> str:
    return f"rsv_{_random(24)}"


def audit_event_id() -> str:
    return f"audit_log-{_random(24)}"


def request_id() -> str:
    """OpenAI's shape (``req_`` and 32 hex digits). Not a secret, so not from the system's randomness: a request id
    is made for every request, and the system call for one was 2% of the API's CPU under load."""
    return f"req_{_requests.getrandbits(128):032x}"


def completion_id() -> str:
    return f"chatcmpl-{_random(24)}"


def run_token() -> str:
    """A run's secret: handed to its trainer alone by the backend (never written to the object store); the metadata
    store keeps only its :func:`token_digest`."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def job_short(job: str) -> str:
    """The 8-character tag of a job used in its model names."""
    return job.removeprefix("ftjob-")[:8]


_SUFFIX_OK = re.compile(r"[^A-Za-z0-9._-]+")


def normalize_suffix(suffix: str | None) -> str:
    """Model-name-safe suffix: OpenAI keeps letters, digits, '-', '_' and '.' and lower-cases."""
    if not suffix:
        return ""
    return _SUFFIX_OK.sub("-", suffix).strip("-").lower()


def fine_tuned_model_name(base: str, org_slug: str, suffix: str | None, job: str) -> str:
    return f"ft:{base}:{org_slug}:{normalize_suffix(suffix)}:{job_short(job)}"


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def webhook_endpoint_id() -> str:
    return f"whep_{_random(24)}"


def webhook_delivery_id() -> str:
    return f"whdel_{_random(24)}"


def webhook_event_id() -> str:
    """A webhook event (OpenAI's ``evt_…``): one per event, the same in every endpoint's delivery of it."""
    return f"evt_{_random(24)}"
