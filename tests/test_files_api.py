"""/v1/files through the official OpenAI SDK, with every response checked against OpenAI's schema."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import chat_lines
from tests.schema import validate
from tests.stores import stored_keys


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
    assert got.headers["content-disposition"] == 'attachment; filename="train.jsonl"'
    assert server.http.get("/v1/files/file-nope/url").status_code == 404
    server.client.files.delete(f.id)
    assert httpx.get(body["url"]).status_code == 404  # the URL outlives nothing: the object is gone
