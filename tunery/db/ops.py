"""Small write operations shared by the API, the scheduler and the reporting service."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from tunery import ids
from tunery.db.models import JobEvent


def now() -> int:
    return int(time.time())


def add_event(
    s: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    ev = JobEvent(
        id=ids.event_id(), job_id=job_id, created_at=now(), level=level, type=type, message=message, data=data
    )
    s.add(ev)
    return ev
