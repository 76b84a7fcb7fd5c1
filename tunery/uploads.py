"""Upload expiry, shared by the API (lazily, on every access) and the scheduler (a sweep on every tick).

An Upload (``/v1/uploads``) that is still ``pending`` at its ``expires_at`` becomes ``expired`` and its parts
are deleted. Every status change is a conditional UPDATE (``... WHERE status = 'pending'``), so it cannot race
with a concurrent ``complete``, ``cancel`` or part upload: exactly one of them moves the upload on.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tunery.db import Database, Upload, UploadPart
from tunery.storage import ObjectStore

log = logging.getLogger("tunery.uploads")

# A `completing` upload is held by one complete request while it assembles the file. If the process died
# meanwhile, the sweep gives the upload up this long after its expiry (assembling takes minutes at most).
STALE_COMPLETING_SECONDS = 3600


def part_key(upload_id: str, part_id: str) -> str:
    return f"uploads/{upload_id}/parts/{part_id}"


def now() -> int:
    return int(time.time())


def drop_parts(s: Session, upload_id: str) -> list[str]:
    """Delete an upload's part rows in this transaction; returns their object keys (delete those after commit)."""
    keys = list(s.scalars(select(UploadPart.object_key).where(UploadPart.upload_id == upload_id)))
    s.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
    return keys


def delete_objects(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # a leftover object is harmless; the status change already happened
            log.exception("could not delete upload object %s", key)


def discard(store: ObjectStore, upload_id: str, keys: list[str]) -> None:
    """Delete a closed upload's objects: its parts, and whatever is still under its prefix (a part written
    concurrently, or on S3 an unfinished multipart upload of a part, which is aborted)."""
    delete_objects(store, keys)
    try:
        store.delete_prefix(f"uploads/{upload_id}/")
    except Exception:
        log.exception("could not clean up the objects of upload %s", upload_id)


def expire(db: Database, store: ObjectStore, upload_id: str, at: int | None = None) -> bool:
    """Expire one upload if it is pending (or stuck completing) past its expiry; True if this call did it."""
    t = now() if at is None else at

    def fn(s: Session) -> list[str] | None:
        # The UPDATE comes first and carries every condition: a concurrent transition wins and this does
        # nothing (and SQLite takes its write lock at once, never upgrading a read snapshot).
        changed = s.execute(
            update(Upload)
            .where(
                Upload.id == upload_id,
                ((Upload.status == "pending") & (Upload.expires_at <= t))
                | ((Upload.status == "completing") & (Upload.expires_at <= t - STALE_COMPLETING_SECONDS)),
            )
            .values(status="expired")
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        keys = drop_parts(s, upload_id)
        # Only a `completing` upload has a file id before completion: its half-assembled file goes too.
        file_id = s.scalar(select(Upload.file_id).where(Upload.id == upload_id))
        if file_id:
            keys.append(f"files/{file_id}")
            s.execute(update(Upload).where(Upload.id == upload_id).values(file_id=None))
        return keys

    with db.session() as s:
        keys = fn(s)
    if keys is None:
        return False
    discard(store, upload_id, keys)
    return True


def sweep_expired(db: Database, store: ObjectStore, at: int | None = None, batch: int = 200) -> int:
    """Expire uploads past their expiry (one indexed query when there is nothing to do); returns how many."""
    t = now() if at is None else at
    with db.session() as s:
        due = list(
            s.scalars(
                select(Upload.id)
                .where(
                    ((Upload.status == "pending") & (Upload.expires_at <= t))
                    | ((Upload.status == "completing") & (Upload.expires_at <= t - STALE_COMPLETING_SECONDS))
                )
                .limit(batch)
            )
        )
    return sum(expire(db, store, upload_id, t) for upload_id in due)


def sweep_orphans(db: Database, store: ObjectStore) -> int:
    """Delete the objects left under ``uploads/`` by uploads that are closed or unknown: a part stored by a process
    that died before it could record or discard it. Returns how many uploads were cleaned."""
    ids = {key.split("/", 2)[1] for key in store.list("uploads/") if key.count("/") >= 2}
    if not ids:
        return 0
    with db.session() as s:
        open_ids = set(
            s.scalars(select(Upload.id).where(Upload.id.in_(ids), Upload.status.in_(("pending", "completing"))))
        )
    orphans = sorted(ids - open_ids)
    for upload_id in orphans:
        log.info("deleting the leftover objects of upload %s", upload_id)
        try:
            store.delete_prefix(f"uploads/{upload_id}/")
        except Exception:
            log.exception("could not delete the leftover objects of upload %s", upload_id)
    return len(orphans)
