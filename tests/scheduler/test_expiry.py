"""The sweep of leftovers (scheduler/expiry.py): what processes killed mid-write left in the object store."""

from __future__ import annotations

import os
import time
from pathlib import Path

from scheduler.expiry import ExpirySweep, sweep_leftovers
from tunery.db import Database, Upload
from tunery.storage import LocalObjectStore
from tunery.uploads import part_key


def _upload(db: Database, upload_id: str, status: str) -> None:
    with db.session() as s:
        s.add(
            Upload(
                id=upload_id,
                organization_id="org",
                project_id="proj",
                filename="a.jsonl",
                purpose="fine-tune",
                bytes=10,
                mime_type="text/jsonl",
                created_at=int(time.time()),
                expires_at=int(time.time()) + 3600,
                status=status,
            )
        )


def test_leftovers_of_killed_writes_and_closed_uploads_are_swept(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.upgrade()
    store = LocalObjectStore(tmp_path / "objects")
    for upload_id, status in [("upload_open", "pending"), ("upload_done", "completed"), ("upload_gone", "cancelled")]:
        _upload(db, upload_id, status)
        store.put_bytes(part_key(upload_id, "part_1"), b"part")
    store.put_bytes(part_key("upload_unknown", "part_1"), b"part")  # its row was never written
    # A part whose writer was killed: an idle temporary file, and one a live writer is still filling.
    idle = store.local_path("uploads/upload_open/parts/.part_2.x.part")
    idle.write_bytes(b"half")
    os.utime(idle, (time.time() - 7200, time.time() - 7200))
    store.local_path("uploads/upload_open/parts/.part_3.y.part").write_bytes(b"being written")

    assert sweep_leftovers(db, store) == 1 + 3  # the idle temporary file; the objects of three closed uploads
    assert store.list("uploads/") == [part_key("upload_open", "part_1")]
    assert store.incomplete("") == ["uploads/upload_open/parts/.part_3.y.part"]
    assert sweep_leftovers(db, store) == 0


def test_the_scheduler_loop_sweeps_leftovers_at_its_own_pace(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.upgrade()
    store = LocalObjectStore(tmp_path / "objects")
    sweep = ExpirySweep(db, store, interval=0)
    store.put_bytes(part_key("upload_unknown", "part_1"), b"part")
    sweep.run()
    assert store.list("uploads/") == []
    store.put_bytes(part_key("upload_unknown2", "part_1"), b"part")
    sweep.run()  # minutes apart, not at every tick
    assert store.list("uploads/") == [part_key("upload_unknown2", "part_1")]
    sweep.run(force=True)
    assert store.list("uploads/") == []
