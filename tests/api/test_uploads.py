"""/v1/uploads through the official OpenAI SDK (raw HTTP for the error cases), checked against OpenAI's schema.

After every failure nothing half-written may stay: no object under ``files/``, and no parts of an upload that
was cancelled, expired or completed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select, update

from scheduler.expiry import sweep_expired_files
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, RunningServer, chat_lines
from tests.schema import validate
from tests.stores import stored_keys
from tunery.db import Database, File, Upload, UploadPart


def stored(srv: RunningServer, prefix: str) -> list[str]:
    """Every object in the store under a prefix, unfinished writes included."""
    return stored_keys(srv, prefix)


_DATABASES: dict[str, Database] = {}


def db(srv: RunningServer) -> Database:
    url = srv.settings.resolved_database_url
    if url not in _DATABASES:
        _DATABASES[url] = Database(url)
    return _DATABASES[url]


def create(srv: RunningServer, size: int, **kw: Any) -> dict[str, Any]:
    body = {"filename": "train.jsonl", "purpose": "fine-tune", "bytes": size, "mime_type": "text/jsonl", **kw}
    r = srv.http.post("/v1/uploads", json=body)
    assert r.status_code == 200, r.text
    validate(r.json(), "Upload")
    return r.json()


def add_part(srv: RunningServer, upload_id: str, data: bytes) -> str:
    r = srv.http.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("blob", data)})
    assert r.status_code == 200, r.text
    part = r.json()
    validate(part, "UploadPart")
    assert part["id"].startswith("part_") and part["upload_id"] == upload_id
    return str(part["id"])


def complete(srv: RunningServer, upload_id: str, part_ids: list[str], **kw: Any) -> Any:
    return srv.http.post(f"/v1/uploads/{upload_id}/complete", json={"part_ids": part_ids, **kw})


def error(r: Any, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    return dict(r.json()["error"])


def status_and_parts(srv: RunningServer, upload_id: str) -> tuple[str, int, list[str]]:
    with db(srv).session() as s:
        status = s.scalar(select(Upload.status).where(Upload.id == upload_id))
        rows = len(list(s.scalars(select(UploadPart.id).where(UploadPart.upload_id == upload_id))))
    return str(status), rows, stored(srv, f"uploads/{upload_id}")


@pytest.mark.integration
def test_sdk_chunked_upload_then_fine_tune(server, tmp_path: Path):
    data = chat_lines(10000)  # ~1 MB in 64 KiB parts
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    up = server.client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=64 * 1024
    )
    validate(up.to_dict(), "Upload")
    assert up.id.startswith("upload_") and up.status == "completed" and up.bytes == len(data)
    assert up.file is not None and up.file.id.startswith("file-")
    assert (up.file.filename, up.file.purpose, up.file.bytes) == ("big.jsonl", "fine-tune", len(data))
    got = server.client.files.retrieve(up.file.id)
    assert got.bytes == len(data) and got.status in ("uploaded", "processed")  # validated right after
    got = server.client.files.wait_for_processing(up.file.id, poll_interval=0.1, max_wait_seconds=30)
    assert got.status == "processed"
    assert server.client.files.content(up.file.id).read() == data
    assert status_and_parts(server, up.id) == ("completed", 0, [])

    job = server.client.fine_tuning.jobs.create(model=TINY, training_file=up.file.id)
    assert job.training_file == up.file.id
    server.client.fine_tuning.jobs.cancel(job.id)  # no need to train


def test_parallel_parts_reordered_with_md5(server):
    chunks = [bytes([65 + i]) * (40_000 + 1000 * i) for i in range(4)]
    extra = b"not listed" * 100
    order = [2, 0, 3, 1]
    want = b"".join(chunks[i] for i in order)
    up = create(server, len(want))
    assert up["status"] == "pending" and up["expires_at"] == up["created_at"] + 3600 and up["file"] is None

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda d: add_part(server, up["id"], d), chunks))
    part_ids = [ids[i] for i in order]
    # The parts hold the declared bytes: one more is refused as it arrives, and leaves nothing behind.
    over = error(server.http.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", extra)}), 413)
    assert (over["code"], over["param"]) == ("upload_bytes_exceeded", "data")

    bad = error(complete(server, up["id"], part_ids, md5="0" * 32))
    assert bad["code"] == "md5_mismatch" and bad["param"] == "md5"
    assert hashlib.md5(want).hexdigest() in bad["message"]
    assert stored(server, "files") == []
    assert status_and_parts(server, up["id"])[:2] == ("pending", 4)  # still open: the client can retry

    r = complete(server, up["id"], part_ids, md5=hashlib.md5(want).hexdigest())
    assert r.status_code == 200, r.text
    done = r.json()
    validate(done, "Upload")
    assert done["status"] == "completed" and done["id"] == up["id"]
    validate(done["file"], "OpenAIFile")
    assert done["file"]["bytes"] == len(want) and done["file"]["filename"] == "train.jsonl"
    assert server.client.files.content(done["file"]["id"]).read() == want
    assert stored(server, "files") == [f"files/{done['file']['id']}"]
    assert status_and_parts(server, up["id"]) == ("completed", 0, [])


def test_complete_refuses_wrong_part_lists(server):
    a, b = b"a" * 3000, b"b" * 2000
    up = create(server, len(a) + len(b))
    other = create(server, 10)
    pa, pb = add_part(server, up["id"], a), add_part(server, up["id"], b)
    foreign = add_part(server, other["id"], b"x" * 10)

    e = error(complete(server, up["id"], [pa]))
    assert e["code"] == "upload_bytes_mismatch" and "3000" in e["message"] and "5000" in e["message"]
    e = error(complete(server, up["id"], [pa, pb, "part_nope"]))
    assert e["param"] == "part_ids" and "part_nope" in e["message"]
    e = error(complete(server, up["id"], [pa, foreign]))
    assert e["param"] == "part_ids" and foreign in e["message"]
    e = error(complete(server, up["id"], [pa, pb, pa]))
    assert e["param"] == "part_ids" and "more than once" in e["message"]
    e = error(complete(server, up["id"], []))
    assert e["param"] == "part_ids"
    assert stored(server, "files") == []
    assert status_and_parts(server, up["id"])[:2] == ("pending", 2)

    r = complete(server, up["id"], [pb, pa])  # the fixed request succeeds
    assert r.status_code == 200 and server.client.files.content(r.json()["file"]["id"]).read() == b + a
    assert status_and_parts(server, other["id"])[:2] == ("pending", 1)  # another upload's part is untouched


def test_closed_uploads_take_nothing(server):
    done = create(server, 4)
    p = add_part(server, done["id"], b"abcd")
    assert complete(server, done["id"], [p]).status_code == 200
    e = error(server.http.post(f"/v1/uploads/{done['id']}/parts", files={"data": ("blob", b"more")}))
    assert e["code"] == "upload_not_pending" and "completed" in e["message"]
    assert "completed" in error(complete(server, done["id"], [p]))["message"]
    assert "completed" in error(server.http.post(f"/v1/uploads/{done['id']}/cancel"))["message"]
    assert len(server.client.files.list().data) == 1

    up = create(server, 8)
    p1 = add_part(server, up["id"], b"12345678")
    cancelled = server.client.uploads.cancel(up["id"])
    validate(cancelled.to_dict(), "Upload")
    assert cancelled.status == "cancelled"
    assert status_and_parts(server, up["id"]) == ("cancelled", 0, [])
    with pytest.raises(openai.BadRequestError) as exc:
        server.client.uploads.parts.create(up["id"], data=b"more")
    assert "cancelled" in exc.value.message
    assert "cancelled" in error(complete(server, up["id"], [p1]))["message"]
    assert "cancelled" in error(server.http.post(f"/v1/uploads/{up['id']}/cancel"))["message"]
    assert status_and_parts(server, up["id"]) == ("cancelled", 0, [])

    for r in (
        server.http.post("/v1/uploads/upload_nope/parts", files={"data": ("blob", b"x")}),
        complete(server, "upload_nope", ["part_x"]),
        server.http.post("/v1/uploads/upload_nope/cancel"),
    ):
        assert "upload_nope" in error(r, 404)["message"]
    assert stored(server, "files") == [f"files/{server.client.files.list().data[0].id}"]
    assert stored(server, "uploads") == []


def test_concurrent_completes_exactly_one_wins(server):
    for round in range(3):
        data = [bytes([97 + round]) * 300_000 for _ in range(4)]
        up = create(server, sum(map(len, data)))
        parts = [add_part(server, up["id"], d) for d in data]
        barrier = threading.Barrier(2)

        def go(_: int, up: dict[str, Any] = up, parts: list[str] = parts, barrier: threading.Barrier = barrier) -> Any:
            barrier.wait()
            return complete(server, up["id"], parts)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(go, range(2)))
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 400], [r.text for r in results]
        loser = next(r for r in results if r.status_code == 400)
        assert error(loser)["code"] == "upload_not_pending"
        assert status_and_parts(server, up["id"]) == ("completed", 0, [])
    files = server.client.files.list().data
    assert len(files) == 3 and sorted(stored(server, "files")) == sorted(f"files/{f.id}" for f in files)


def test_part_size_limit(tiny_server_factory):
    srv = tiny_server_factory(max_upload_part_bytes=1000)
    up = create(srv, 3000)
    for size in (5000, 200_000):  # caught while streaming; refused from the content-length alone
        e = error(srv.http.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"x" * size)}), 413)
        assert e["code"] == "part_too_large" and e["param"] == "data"
    assert status_and_parts(srv, up["id"]) == ("pending", 0, [])
    parts = [add_part(srv, up["id"], b"y" * 1000) for _ in range(3)]
    assert complete(srv, up["id"], parts).status_code == 200


def test_create_validation_and_file_expiry(server):
    http = server.http
    base = {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}
    e = error(http.post("/v1/uploads", json={**base, "bytes": 8 * 1024**3 + 1}))
    assert (e["code"], e["param"]) == ("upload_too_large", "bytes")
    assert error(http.post("/v1/uploads", json={**base, "filename": "t.csv"}))["param"] == "filename"
    assert error(http.post("/v1/uploads", json={**base, "purpose": "cats"}))["param"] == "purpose"
    assert error(http.post("/v1/uploads", json={k: v for k, v in base.items() if k != "bytes"}))["param"] == "bytes"
    assert error(http.post("/v1/uploads", json={**base, "bytes": 0}))["param"] == "bytes"
    short = {**base, "expires_after": {"anchor": "created_at", "seconds": 5}}
    assert error(http.post("/v1/uploads", json=short))["param"] == "expires_after.seconds"
    assert create(server, 3, filename="notes.txt", purpose="assistants")["purpose"] == "assistants"

    up = server.client.uploads.create(
        bytes=3,
        filename="t.jsonl",
        mime_type="text/jsonl",
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert up.expires_at == up.created_at + 3600  # the upload's own lifetime
    part = server.client.uploads.parts.create(up.id, data=b"{}\n")
    done = server.client.uploads.complete(up.id, part_ids=[part.id])
    assert done.file is not None and done.file.expires_at == done.file.created_at + 7200  # the file's


def test_expiry_lazily_and_by_the_scheduler(server):
    swept, lazy = create(server, 100), create(server, 100)
    for up in (swept, lazy):
        add_part(server, up["id"], b"z" * 50)
    database = db(server)
    with database.session() as s:
        s.execute(update(Upload).where(Upload.id == swept["id"]).values(expires_at=int(time.time()) - 1))
    deadline = time.monotonic() + 10
    while status_and_parts(server, swept["id"])[0] != "expired":  # nobody asks: the scheduler's sweep does it
        assert time.monotonic() < deadline, "the scheduler did not expire the upload"
        time.sleep(0.1)
    assert status_and_parts(server, swept["id"]) == ("expired", 0, [])
    e = error(server.http.post(f"/v1/uploads/{swept['id']}/parts", files={"data": ("blob", b"x")}))
    assert e["code"] == "upload_not_pending" and "expired" in e["message"]

    # Lazily, on access: stop the scheduler from getting there first by expiring and asking at once.
    server.app.state.ctx.settings.upload_expiry_seconds = 0
    fresh = create(server, 1)
    e = error(server.http.post(f"/v1/uploads/{fresh['id']}/parts", files={"data": ("blob", b"x")}))
    assert "expired" in e["message"]
    with database.session() as s:
        s.execute(update(Upload).where(Upload.id == lazy["id"]).values(expires_at=int(time.time()) - 1))
    assert "expired" in error(complete(server, lazy["id"], ["part_x"]))["message"]
    assert "expired" in error(server.http.post(f"/v1/uploads/{lazy['id']}/cancel"))["message"]
    assert status_and_parts(server, lazy["id"]) == ("expired", 0, [])

    # A complete request that died mid-way (its process gone) leaves `completing`; one from before holds were
    # renewed (no completing_at) is given up by the sweep an hour after the expiry, with the file it was assembling.
    server.app.state.ctx.settings.upload_expiry_seconds = 3600
    stuck = create(server, 1)
    add_part(server, stuck["id"], b"s")
    server.app.state.ctx.store.put_bytes("files/file-stuck", b"s")
    with database.session() as s:
        s.execute(
            update(Upload)
            .where(Upload.id == stuck["id"])
            .values(status="completing", file_id="file-stuck", expires_at=int(time.time()) - 3601)
        )
    deadline = time.monotonic() + 10
    while status_and_parts(server, stuck["id"])[0] != "expired":
        assert time.monotonic() < deadline, "the scheduler did not give up the stuck upload"
        time.sleep(0.1)
    assert status_and_parts(server, stuck["id"]) == ("expired", 0, [])
    assert stored(server, "uploads") == [] and stored(server, "files") == []
    with database.session() as s:
        assert s.scalars(select(File)).first() is None


def test_a_complete_whose_process_died_is_given_back(tiny_server_factory):
    """A complete request killed with its process leaves the upload `completing` and half a file. Once nobody has
    renewed the hold for TUNERY_UPLOAD_COMPLETING_STALE_SECONDS, the client's retried complete goes through (the
    half file deleted), and one the client never retries is given back by the scheduler's sweep."""
    srv = tiny_server_factory(upload_completing_stale_seconds=2)
    database, store = db(srv), srv.app.state.ctx.store
    retried, forgotten = create(srv, 6), create(srv, 6)
    parts = {up["id"]: add_part(srv, up["id"], b"abcdef") for up in (retried, forgotten)}
    for up in (retried, forgotten):  # what a complete request killed mid-way leaves
        store.put_bytes(f"files/file-dead{up['id'][-4:]}", b"abc")
        with database.session() as s:
            s.execute(
                update(Upload)
                .where(Upload.id == up["id"])
                .values(status="completing", file_id=f"file-dead{up['id'][-4:]}", completing_at=int(time.time()))
            )
    e = error(complete(srv, retried["id"], [parts[retried["id"]]]))  # the hold is fresh: maybe still alive
    assert e["code"] == "upload_not_pending" and "try again in 2 s" in e["message"]
    time.sleep(3.1)
    r = complete(srv, retried["id"], [parts[retried["id"]]])
    assert r.status_code == 200, r.text
    assert server_file_bytes(srv, r.json()["file"]["id"]) == b"abcdef"
    deadline = time.monotonic() + 10
    while status_and_parts(srv, forgotten["id"])[0] != "pending":  # nobody asks: the scheduler's sweep does it
        assert time.monotonic() < deadline, "the scheduler did not give the upload back"
        time.sleep(0.1)
    assert stored(srv, "files") == [f"files/{r.json()['file']['id']}"]  # both half files are gone
    assert complete(srv, forgotten["id"], [parts[forgotten["id"]]]).status_code == 200


def server_file_bytes(srv: RunningServer, file_id: str) -> bytes:
    return srv.client.files.content(file_id).read()


def test_uploads_belong_to_their_project(server, tiny_server_factory):
    up = create(server, 4)
    part = add_part(server, up["id"], b"abcd")
    other = tiny_server_factory(data_dir=server.settings.data_dir, project_id="proj_other")  # same stores
    for r in (
        other.http.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("blob", b"x")}),
        complete(other, up["id"], [part]),
        other.http.post(f"/v1/uploads/{up['id']}/cancel"),
    ):
        error(r, 404)
    theirs = create(other, 4)
    e = error(complete(server, up["id"], [part, add_part(other, theirs["id"], b"wxyz")]))
    assert e["param"] == "part_ids"
    assert status_and_parts(server, up["id"])[:2] == ("pending", 1)
    assert complete(server, up["id"], [part]).status_code == 200


def test_large_parts_assembled_server_side(server, object_store):
    """Parts of at least 5 MiB (all but the last) are S3 parts: on S3 the file is assembled by UploadPartCopy,
    no byte of it uploaded again; smaller parts are streamed (the other tests). Either way the bytes are exact."""
    mib = 1024 * 1024
    chunks = [b"A" * (5 * mib), b"B" * (5 * mib + 3), b"C" * 1000]
    want = chunks[1] + chunks[0] + chunks[2]
    store = server.app.state.ctx.store
    calls: list[str] = []
    if object_store == "s3":
        for op in ("UploadPartCopy", "UploadPart", "PutObject"):
            store.client.meta.events.register(f"before-call.s3.{op}", lambda op=op, **kw: calls.append(op))
    up = create(server, len(want), purpose="batch")  # not validated: no report written meanwhile
    ids = [add_part(server, up["id"], c) for c in chunks]
    n_writes = len(calls)
    r = complete(server, up["id"], [ids[1], ids[0], ids[2]], md5=hashlib.md5(want).hexdigest())
    assert r.status_code == 200, r.text
    assert server.client.files.content(r.json()["file"]["id"]).read() == want
    if object_store == "s3":
        assert calls[n_writes:] == ["UploadPartCopy"] * 3
    assert status_and_parts(server, up["id"]) == ("completed", 0, [])


def test_cancel_and_expiry_abort_unfinished_writes(server):
    """A part still being written when its upload is cancelled or expires (on S3 an unfinished multipart
    upload) is aborted with the rest."""
    store = server.app.state.ctx.store
    for how in ("cancel", "expire"):
        up = create(server, 100)
        add_part(server, up["id"], b"z" * 50)
        key = f"uploads/{up['id']}/parts/part_inflight"
        if hasattr(store, "client"):  # S3: a multipart upload that was never completed
            store.client.create_multipart_upload(Bucket=store.bucket, Key=store._key(key))
        else:  # local folder: the temporary file of a write in progress
            path = server.settings.data_dir / "objects" / f"{key}.x.part"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half")
        assert stored(server, f"uploads/{up['id']}/") != []
        if how == "cancel":
            assert server.http.post(f"/v1/uploads/{up['id']}/cancel").status_code == 200
        else:
            with db(server).session() as s:
                s.execute(update(Upload).where(Upload.id == up["id"]).values(expires_at=int(time.time()) - 1))
            assert "expired" in error(complete(server, up["id"], ["part_x"]))["message"]

        # A local temporary file is its writer's to remove; only the stored parts go. On S3 the unfinished
        # multipart upload is aborted too.
        def left(prefix: str = f"uploads/{up['id']}/") -> list[str]:
            return stored(server, prefix) if hasattr(store, "client") else store.list(prefix)

        # Expiry is decided by one conditional UPDATE, and the scheduler's sweep may win it against this request:
        # then the request answers "expired" while the sweep is still deleting, so give the sweep a moment.
        deadline = time.monotonic() + 15
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left() == []


def test_file_of_an_upload_expires_like_any_file(server):
    """``expires_after`` of an upload is the lifetime of the File it makes: past it, the file is gone at once and
    the scheduler's expiry sweep deletes it (row, assembled object, reports) as DELETE /v1/files/{id} does."""
    up = server.client.uploads.create(
        bytes=len(chat_lines(12)),
        filename="t.jsonl",
        mime_type="text/jsonl",
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    part = server.client.uploads.parts.create(up.id, data=chat_lines(12))
    done = server.client.uploads.complete(up.id, part_ids=[part.id])
    assert done.file is not None and done.file.expires_at == done.file.created_at + 3600
    file_id = done.file.id
    server.client.files.wait_for_processing(file_id, poll_interval=0.1, max_wait_seconds=30)
    assert stored(server, f"files/{file_id}") == [f"files/{file_id}"] and stored(server, f"reports/files/{file_id}/")
    with db(server).session() as s:
        s.execute(update(File).where(File.id == file_id).values(expires_at=int(time.time()) - 1))

    error(server.http.get(f"/v1/files/{file_id}"), 404)
    error(server.http.get(f"/v1/files/{file_id}/content"), 404)
    assert file_id not in [f.id for f in server.client.files.list()]
    e = error(server.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id}))
    assert e["code"] == "invalid_file_id"

    sweep_expired_files(server.app.state.ctx.db, server.app.state.ctx.store)
    with db(server).session() as s:
        assert s.scalar(select(File).where(File.id == file_id)) is None
    assert stored(server, f"files/{file_id}") == [] and stored(server, f"reports/files/{file_id}/") == []
