"""A File's objects, its expiry and its deletion, shared by the API and the scheduler.

A File lives in two places: its row (``files``) and its objects in the object store, the content (``object_key``)
and the validation reports under ``reports/files/{id}/``. ``delete_file`` is the one way a file goes, whether the
user deletes it (``DELETE /v1/files/{id}``) or it expires (``expires_after``, swept by ``scheduler/expiry.py``).

A file whose ``expires_at`` has passed is gone for the API at once (``live``), before the sweep deletes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import quote

from sqlalchemy import BindParameter, ColumnElement, delete, or_
from sqlalchemy.orm import Session

from tunery.db import Database, File
from tunery.storage import ObjectStore

log = logging.getLogger("tunery.files")


def report_key(file_id: str, model: str | None = None) -> str:
    """The validation report made at upload (no model), or the one made for a job's model."""
    if model:
        return f"reports/files/{file_id}/validation/{quote(model, safe='')}.json"
    return f"reports/files/{file_id}/validation.json"


def report_prefix(file_id: str) -> str:
    return f"reports/files/{file_id}/"


def live(at: int | BindParameter[int] | None = None) -> ColumnElement[bool]:
    """The files not expired at ``at`` (now by default; a bound parameter in a statement built once): without
    ``expires_at``, or with it still ahead."""
    t = int(time.time()) if at is None else at
    return or_(File.expires_at.is_(None), File.expires_at > t)


def expired(at: int) -> ColumnElement[bool]:
    """The files whose ``expires_at`` has passed at ``at``."""
    return File.expires_at.is_not(None) & (File.expires_at <= at)


def delete_file(
    db: Database,
    store: ObjectStore,
    file_id: str,
    *conditions: ColumnElement[bool],
    on_deleted: Callable[[Session], None] | None = None,
) -> bool:
    """Delete a file for good: its row, then its content and validation reports in the object store.

    The row goes in one conditional DELETE (``conditions`` narrow it, e.g. ``expired(t)``), so of two concurrent
    deleters exactly one deletes the file and its objects; returns whether this call did. Once the row is gone the
    file is gone for every reader: an object that cannot be deleted then is logged and left behind (nothing refers
    to it any more), not raised. ``on_deleted`` runs in the deleting transaction, only if this call deleted the row
    (the API records the deletion in the audit log there).
    """
    with db.session() as s:
        # One statement that deletes and reads: no read snapshot to upgrade (SQLite), no window for a second deleter.
        key = s.scalar(delete(File).where(File.id == file_id, *conditions).returning(File.object_key))
        if key is not None and on_deleted is not None:
            on_deleted(s)
    if key is None:
        return False
    try:
        store.delete(key)
        store.delete_prefix(report_prefix(file_id))
    except Exception:
        log.exception("file %s was deleted, but not (all of) its objects in the object store", file_id)
    return True
