"""Upload expiry, shared by the API (lazily, on every access) and the scheduler (a sweep on every tick).

An Upload (``/v1/uploads``) that is still ``pending`` at its ``expires_at`` becomes ``expired`` and its parts
are deleted. Every status change is a conditional UPDATE (``... WHERE status = 'pending'``), so it cannot race
with a concurrent ``complete``, ``cancel`` or part upload: exactly one of them moves the upload on.

A ``complete`` request holds its upload ``completing`` while it assembles the file, and renews ``completing_at``
while it does (:func:`holding`). A holder that falls silent for ``TUNERY_UPLOAD_COMPLETING_STALE_SECONDS`` died
with its process (a server killed mid-complete): :func:`give_back_stale` puts the upload back to ``pending`` and
deletes the file it was assembling, so the client's retried ``complete`` (or ``cancel``) goes through. Should the
holder be alive after all, its own final UPDATE (on its ``file_id``) fails and it deletes its file: one wins.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

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


def heartbeat_seconds(stale_seconds: float) -> float:
    """How often a complete request renews its hold: several times within the stale limit."""
    return max(0.2, stale_seconds / 5)


@contextlib.contextmanager
def holding(db: Database, upload_id: str, file_id: str, stale_seconds: float) -> Iterator[None]:
    """While the body runs, renew ``completing_at`` of the upload this request holds (``file_id`` is its own)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_seconds(stale_seconds)):
            try:
                with db.session() as s:
                    s.execute(
                        update(Upload)
                        .where(Upload.id == upload_id, Upload.status == "completing", Upload.file_id == file_id)
                        .values(completing_at=now())
                    )
            except Exception:  # the next beat tries again; the completion itself reports a dead database
                log.warning("could not renew the hold on upload %s", upload_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"hold-{upload_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def give_back_stale(
    db: Database, store: ObjectStore, stale_seconds: float, upload_id: str | None = None, at: int | None = None
) -> int:
    """Put back to ``pending`` the ``completing`` uploads (``upload_id`` alone, or all) whose complete request has
    been silent for ``stale_seconds``, deleting the files they were assembling; returns how many."""
    t = now() if at is None else at
    stale = (Upload.status == "completing") & (Upload.completing_at <= t - stale_seconds)
    with db.session() as s:
        q = select(Upload.id, Upload.file_id).where(stale)
        due = list(s.execute(q.where(Upload.id == upload_id) if upload_id else q.limit(200)))
    n = 0
    for uid, file_id in due:
        with db.session() as s:
            changed = s.execute(
                update(Upload)
                .where(Upload.id == uid, Upload.file_id == file_id, stale)
                .values(status="pending", file_id=None, completing_at=None)
            )
        if changed.rowcount != 1:  # type: ignore[attr-defined]  # it finished (or renewed its hold) meanwhile
            continue
        n += 1
        log.warning("upload %s: its complete request stopped (its process died?); the upload is pending again", uid)
        if file_id:
            delete_objects(store, [f"files/{file_id}"])
    return n


def sweep_expired(
    db: Database,
    store: ObjectStore,
    at: int | None = None,
    batch: int = 200,
    completing_stale_seconds: float | None = None,
) -> int:
    """Expire uploads past their expiry (one indexed query when there is nothing to do); returns how many. With
    ``completing_stale_seconds``, uploads whose complete request died are first given back (:func:`give_back_stale`)."""
    t = now() if at is None else at
    if completing_stale_seconds is not None:
        give_back_stale(db, store, completing_stale_seconds, at=t)
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
