"""/v1/files through the official OpenAI SDK, with every response checked against OpenAI's schema."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import get_args

import httpx
import openai
import pytest
from sqlalchemy import select, update

from api.protocol.files import Purpose
from api.services.files import base64_chunks
from scheduler import expiry
from scheduler.expiry import sweep_expired_files
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, chat_lines
from tests.schema import validate
from tests.stores import stored_keys
from tunery import files as tunery_files
from tunery.db import File
from tunery.db.models import UPLOAD_PURPOSES


def test_upload_retrieve_content_delete(server, upload):
    data = chat_lines(12)
    f = upload(data)
    assert f.id.startswith("file-")
    assert (f.object, f.purpose, f.filename, f.bytes) == ("file", "fine-tune", "train.jsonl", len(data))
    assert f.status in ("uploaded", "processed")  # training files are validated right after upload
    assert server.client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=30).status == "processed"
    raw = server.http.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "fine-tune"}).json()
    validate(raw, "OpenAIFile")

    got = server.client.files.retrieve(f.id)
    assert got.id == f.id and got.bytes == len(data)
    validate(server.http.get(f"/v1/files/{f.id}").json(), "OpenAIFile")

    content = server.client.files.content(f.id).read()
    assert hashlib.sha256(content).hexdigest() == hashlib.sha256(data).hexdigest()

    other = upload(data, name="other.jsonl")
    raw_deleted = server.http.delete(f"/v1/files/{other.id}").json()
    validate(raw_deleted, "DeleteFileResponse")
    assert raw_deleted == {"id": other.id, "object": "file", "deleted": True}
    deleted = server.client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError) as e:
        server.client.files.retrieve(f.id)
    assert e.value.body["message"] == f"No such File object: {f.id}"
    with pytest.raises(openai.NotFoundError):
        server.client.files.content(f.id)
    # The object is gone from the store too.
    assert stored_keys(server, f"files/{f.id}") == []


def test_large_upload_is_streamed_whole(server, upload):
    data = chat_lines(40000)  # ~4 MB: spooled to disk and streamed to the store in chunks
    assert len(data) > 3_000_000
    f = upload(data, name="big.jsonl")
    assert f.bytes == len(data)
    assert server.client.files.content(f.id).read() == data


def test_list_pagination_order_and_purpose(server, upload):
    ids = [upload(chat_lines(10), name=f"f{i}.jsonl").id for i in range(5)]
    other = upload(b"x", name="notes.txt", purpose="assistants").id

    page = server.client.files.list(limit=2)
    assert [f.id for f in page.data] == [other, ids[4]]
    assert page.has_more
    raw = server.http.get("/v1/files", params={"limit": 2}).json()
    validate(raw, "ListFilesResponse")
    assert raw["first_id"] == other and raw["last_id"] == ids[4]

    every = [f.id for f in server.client.files.list(limit=2, purpose="fine-tune")]  # auto-pagination
    assert every == list(reversed(ids))
    asc = [f.id for f in server.client.files.list(order="asc", purpose="fine-tune")]
    assert asc == ids
    after = server.client.files.list(after=ids[3], purpose="fine-tune", limit=10)
    assert [f.id for f in after.data] == [ids[2], ids[1], ids[0]] and not after.has_more


def test_list_cursors_and_limits_as_openai(server, upload):
    """An unknown or deleted ``after`` ends the list (an empty page, not a 400); ``first_id``/``last_id`` are
    strings even on an empty page (OpenAI's schema has them as required strings); a ``limit`` beyond a page's
    maximum is served, not refused."""
    ids = [upload(chat_lines(3), name=f"f{i}.jsonl").id for i in range(3)]
    server.client.files.delete(ids[1])
    for cursor in (ids[1], "file-neverexisted"):
        raw = server.http.get("/v1/files", params={"after": cursor})
        assert raw.status_code == 200, raw.text
        validate(raw.json(), "ListFilesResponse")
        assert raw.json() == {"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": False}
    big = server.http.get("/v1/files", params={"limit": 10**30})
    assert big.status_code == 200 and [f["id"] for f in big.json()["data"]] == [ids[2], ids[0]]
    assert server.http.get("/v1/files", params={"limit": 0}).status_code == 400


def test_upload_errors(server):
    http = server.http
    r = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "purpose"
    r = http.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("a.jsonl", b"{}")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = http.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "cats"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = http.post("/v1/files", files={"file": ("a.csv", b"a,b")}, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and ".jsonl" in r.json()["error"]["message"]
    r = http.post("/v1/files", files={"file": ("a.jsonl", b"")}, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    r = http.post("/v1/files", content=b"not multipart", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    for r in (http.get("/v1/files/file-nope"), http.delete("/v1/files/file-nope")):
        assert r.status_code == 404
        validate(r.json(), "ErrorResponse")
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    # Nothing half-written is left behind by the rejected uploads.
    assert server.client.files.list().data == []


def test_file_size_limit(tiny_server_factory, tmp_path):
    srv = tiny_server_factory(max_file_bytes=1000)
    r = srv.http.post("/v1/files", files={"file": ("a.jsonl", b"x" * 5000)}, data={"purpose": "fine-tune"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "file_too_large"
    assert srv.client.files.list().data == []
    assert stored_keys(srv, "files/") == []


def test_expires_after(server):
    f = server.client.files.create(
        file=("a.jsonl", chat_lines(10)),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert f.expires_at == f.created_at + 7200
    with pytest.raises(openai.BadRequestError):
        server.client.files.create(
            file=("a.jsonl", chat_lines(10)), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 5}
        )


def test_download_url(server, upload, object_store):
    """Tunery's extension GET /v1/files/{id}/url: a presigned URL straight to the object store (S3 only)."""
    data = chat_lines(10)
    f = upload(data)
    r = server.http.get(f"/v1/files/{f.id}/url")
    if object_store == "local":
        e = r.json()["error"]
        assert r.status_code == 400 and e["code"] == "presigned_urls_unsupported" and e["param"] == "file_id"
        return
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "file.url" and body["id"] == f.id
    assert body["expires_at"] - f.created_at >= 3600 - 5
    got = httpx.get(body["url"])  # no API key, not through the API
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-disposition"] == "attachment; filename=\"train.jsonl\"; filename*=UTF-8''train.jsonl"
    assert server.http.get("/v1/files/file-nope/url").status_code == 404
    server.client.files.delete(f.id)
    assert httpx.get(body["url"]).status_code == 404  # the URL outlives nothing: the object is gone


def test_a_report_for_a_model_this_server_does_not_have_is_a_404(tiny_server_factory):
    """Found by tests/api/test_fuzz.py: once a job made a report of the file, ``?model=`` of 43 four-byte characters,
    percent-encoded into the report's key, was a file name too long for the local folder: a 500."""
    srv = tiny_server_factory(max_concurrent_runs=0)
    f = srv.client.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune")
    assert srv.http.get(f"/v1/files/{f.id}/validation", params={"model": TINY}).status_code == 404
    srv.wait_job(srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id).id, {"queued"}, timeout=30)
    report = srv.http.get(f"/v1/files/{f.id}/validation", params={"model": TINY})
    assert report.status_code == 200 and report.json()["model"] == TINY
    for model in ("\U0001d596" * 43, "\U0001d596" * 256, "x" * 256, "other-model"):
        r = srv.http.get(f"/v1/files/{f.id}/validation", params={"model": model})
        assert r.status_code == 404, r.text
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == "model" and "No report of file" in r.json()["error"]["message"]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 100, 65537])
def test_base64_chunks_join_into_the_base64_of_the_whole(size):
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    chunkings = [[data], [data[i : i + 1] for i in range(len(data))], [data[i : i + 7] for i in range(0, len(data), 7)]]
    for chunks in chunkings:
        assert b"".join(base64_chunks(iter(chunks))) == base64.b64encode(data)


def test_upload_purposes_have_one_home():
    assert set(get_args(Purpose)) == set(UPLOAD_PURPOSES)


# ---- expires_after: an expired file is gone at once, and deleted for good by the scheduler's sweep -------------
def expire_now(srv, file_id: str) -> None:
    """Move the clock past a file's expiry: its expires_at an instant ago."""
    with srv.app.state.ctx.db.session() as s:
        s.execute(update(File).where(File.id == file_id).values(expires_at=int(time.time()) - 1))


def file_row(srv, file_id: str) -> File | None:
    with srv.app.state.ctx.db.session() as s:
        return s.scalar(select(File).where(File.id == file_id))


def test_expired_file_is_gone_at_once_then_swept(server):
    client, http = server.client, server.http
    f = client.files.create(
        file=("a.jsonl", chat_lines(12)), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    keep = client.files.create(file=("b.jsonl", chat_lines(12)), purpose="fine-tune")
    client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=30)
    assert stored_keys(server, f"reports/files/{f.id}/") != []  # the validation report made at upload
    expire_now(server, f.id)

    # Before any sweep: every route answers as if it had been deleted.
    for r in (
        http.get(f"/v1/files/{f.id}"),
        http.get(f"/v1/files/{f.id}/content"),
        http.get(f"/v1/files/{f.id}/validation"),
        http.get(f"/v1/files/{f.id}/url"),
        http.delete(f"/v1/files/{f.id}"),
    ):
        assert r.status_code == 404, r.text
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"] == {
            "message": f"No such File object: {f.id}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    assert [x.id for x in client.files.list()] == [keep.id]
    assert [x.id for x in client.files.list(purpose="fine-tune", order="asc")] == [keep.id]
    r = http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": f.id})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file_id"
    assert r.json()["error"]["param"] == "training_file"
    r = http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": keep.id, "validation_file": f.id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "validation_file"

    # The sweep deletes it as DELETE does: row, content and reports; the other file is untouched.
    sweep_expired_files(server.app.state.ctx.db, server.app.state.ctx.store)
    assert file_row(server, f.id) is None
    assert stored_keys(server, f"files/{f.id}") == [] and stored_keys(server, f"reports/files/{f.id}/") == []
    assert client.files.retrieve(keep.id).id == keep.id
    assert stored_keys(server, f"files/{keep.id}") == [f"files/{keep.id}"]


def test_scheduler_sweeps_expired_files(tiny_server_factory, monkeypatch):
    monkeypatch.setattr(expiry, "SWEEP_SECONDS", 0.1)  # every pass, not every 10 s
    srv = tiny_server_factory()
    f = srv.client.files.create(
        file=("a.txt", b"notes"), purpose="assistants", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert stored_keys(srv, f"files/{f.id}") == [f"files/{f.id}"]
    expire_now(srv, f.id)
    deadline = time.monotonic() + 15
    while file_row(srv, f.id) is not None or stored_keys(srv, f"files/{f.id}"):  # nobody asks: the scheduler does it
        assert time.monotonic() < deadline, "the scheduler did not delete the expired file"
        time.sleep(0.1)


def test_delete_and_expiry_share_one_deletion(server, upload, monkeypatch):
    calls: list[str] = []
    real = tunery_files.delete_file

    def spy(db, store, file_id, *conditions, **options):  # type: ignore[no-untyped-def]
        calls.append(file_id)
        return real(db, store, file_id, *conditions, **options)

    monkeypatch.setattr(tunery_files, "delete_file", spy)
    deleted, expired = upload(chat_lines(10)).id, upload(chat_lines(10), name="e.jsonl").id
    assert server.client.files.delete(deleted).deleted
    expire_now(server, expired)
    sweep_expired_files(server.app.state.ctx.db, server.app.state.ctx.store)
    assert deleted in calls and expired in calls
    assert file_row(server, expired) is None and stored_keys(server, f"files/{expired}") == []


def test_expired_file_of_an_unfinished_job_is_kept_until_the_job_ends(tiny_server_factory):
    """OpenAI lets a job's file expire under it; the job keeps running on it. Tunery's trainer reads the file from
    the object store when each run starts (and after a pause or crash), so the sweep keeps the expired file of a job
    that has not ended (hidden all the same) and deletes it once the job has."""
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the job stays queued
    db, store = srv.app.state.ctx.db, srv.app.state.ctx.store
    lifetime = {"anchor": "created_at", "seconds": 3600}
    train = srv.client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune", expires_after=lifetime)
    mix = srv.client.files.create(
        file=("g.jsonl", chat_lines(30, answer="A: {q}")), purpose="fine-tune", expires_after=lifetime
    )
    job = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=train.id, extra_body={"tunery": {"data": {"mix": {"file": mix.id, "fraction": 0.2}}}}
    )
    srv.wait_job(job.id, {"queued"}, timeout=30)
    for f in (train, mix):
        expire_now(srv, f.id)

    sweep_expired_files(db, store)
    for f in (train, mix):
        assert file_row(srv, f.id) is not None and stored_keys(srv, f"files/{f.id}") == [f"files/{f.id}"]
        with pytest.raises(openai.NotFoundError):  # hidden all the same
            srv.client.files.retrieve(f.id)
    r = srv.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": train.id})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file_id"  # no new job gets it
    assert srv.client.fine_tuning.jobs.retrieve(job.id).training_file == train.id

    srv.client.fine_tuning.jobs.cancel(job.id)
    sweep_expired_files(db, store)
    for f in (train, mix):
        assert file_row(srv, f.id) is None and stored_keys(srv, f"files/{f.id}") == []
