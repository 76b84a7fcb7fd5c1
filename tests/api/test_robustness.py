"""No request makes the server answer 500 or leak a traceback; every error is OpenAI-shaped with a request id."""

from __future__ import annotations

import time
from urllib.parse import quote, unquote

import pytest

from tests.conftest import TINY, chat_lines
from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tests.schema import validate

MALFORMED = [
    ("POST", "/v1/fine_tuning/jobs", {"content": b"[1,2", "headers": {"content-type": "application/json"}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": []}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": 5, "training_file": None}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "x" * 100000, "training_file": "f"}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "m", "training_file": "f", "seed": 10**30}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "m", "training_file": "f", "method": {"type": "x"}}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "m", "training_file": "f", "hyperparameters": "auto"}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "m", "training_file": "f", "metadata": {"a": 1}}}),
    ("POST", "/v1/fine_tuning/jobs", {"content": b"model=x", "headers": {"content-type": "text/plain"}}),
    ("GET", "/v1/fine_tuning/jobs", {"params": {"limit": "abc"}}),
    ("GET", "/v1/fine_tuning/jobs", {"params": {"limit": 0}}),
    ("GET", "/v1/files", {"params": {"order": "sideways"}}),
    ("POST", "/v1/files", {"content": b"", "headers": {"content-type": "application/json"}}),
    (
        "POST",
        "/v1/files",
        {"files": {"file": ("a.jsonl", b"x")}, "data": {"purpose": "fine-tune", "expires_after[anchor]": "nope"}},
    ),
    ("POST", "/v1/chat/completions", {"json": {"model": "tiny-llama", "messages": "hello"}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "tiny-llama", "messages": [{"content": "no role"}]}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "tiny-llama", "messages": [{"role": "user", "content": 5}]}}),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}},
    ),
    ("POST", "/v1/chat/completions", {"json": {"model": "tiny-llama", "messages": [{"role": "tool", "content": "x"}]}}),
    (
        "POST",
        "/v1/chat/completions",
        {
            "json": {
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            }
        },
    ),
    ("DELETE", "/v1/models/tiny-llama", {}),
    ("DELETE", "/v1/models/ft%3Anope", {}),
    ("GET", "/v1/models/a/b/c", {}),
    ("PUT", "/v1/files", {}),
    ("GET", "/v1/files/file-x/content", {}),
]


# NUL characters reach the metadata store in ids, cursors and names: PostgreSQL refuses them in text.
WITH_NUL = [
    ("GET", "/v1/files", {"params": {"after": "file-a\x00b"}}),
    ("GET", "/v1/files/file-%00x", {}),
    ("GET", "/v1/files/file-%00x/content", {}),
    ("GET", "/v1/fine_tuning/jobs/ftjob-%00x", {}),
    ("POST", "/v1/fine_tuning/jobs/ftjob-%00x/cancel", {}),
    ("GET", "/v1/fine_tuning/jobs", {"params": {"after": "\x00"}}),
    ("GET", "/v1/models/ft:%00", {}),
    ("DELETE", "/v1/models/ft:%00", {}),
    ("POST", "/v1/uploads", {"json": {"filename": "\x00.jsonl", "purpose": "fine-tune", "bytes": 1, "mime_type": "x"}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "tiny-llama", "training_file": "file-\x00"}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "ft:\x00", "messages": [{"role": "user", "content": "hi"}]}}),
]


def test_nul_characters_never_get_a_500(server):
    """PostgreSQL answers 400 (it refuses NUL in text), SQLite 404 or, for a mere file name, accepts it."""
    for method, path, kwargs in WITH_NUL:
        r = server.http.request(method, path, **kwargs)
        assert r.status_code < 500, (method, path, r.text)
        if r.status_code >= 400:
            validate(r.json(), "ErrorResponse")


@pytest.mark.parametrize(("method", "path", "kwargs"), MALFORMED, ids=[f"{m} {p}" for m, p, _ in MALFORMED])
def test_malformed_requests_get_clean_4xx(server, method, path, kwargs):
    r = server.http.request(method, path, **kwargs)
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert r.headers["x-request-id"]


def test_unexpected_error_is_a_clean_500(server):
    """A bug in a part (here: a serving engine that crashes) still gives an OpenAI-shaped error, no traceback."""

    class Broken:
        def generate(self, *a, **k):
            raise RuntimeError("secret internal detail")

        def stream(self, *a, **k):
            raise RuntimeError("secret internal detail")

        def unload(self, name):
            pass

    backend = server.app.state.ctx.serving
    original, backend.engine = backend.engine, Broken()
    try:
        r = server.http.post(
            "/v1/chat/completions", json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}]}
        )
    finally:
        backend.engine = original
    assert r.status_code == 500
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["type"] == "server_error"
    assert "secret internal detail" not in r.text and "Traceback" not in r.text
    assert r.headers["x-request-id"]


def test_missing_base_model_files_is_503(tiny_server_factory, tmp_path):
    srv = tiny_server_factory(base_models={"ghost": str(tmp_path / "nowhere")})
    r = srv.http.post("/v1/chat/completions", json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert r.headers["x-should-retry"] == "false"


# ---- hostile inputs that once got a 500 or a dropped connection (issue 11) ----------------------------------------
def _wait_file(server, file_id: str) -> dict:
    deadline = time.monotonic() + 30
    while (f := server.http.get(f"/v1/files/{file_id}").json())["status"] == "uploaded":
        assert time.monotonic() < deadline, f
        time.sleep(0.1)
    return f


def test_a_non_ascii_bearer_token_is_a_401(tiny_server_factory):
    srv = tiny_server_factory(api_keys=["sk-right-key"])
    r = srv.http.get("/v1/files", headers=[(b"authorization", "Bearer sk-wrông-kéy".encode())])
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert srv.http.get("/v1/files", headers={"authorization": "Bearer sk-right-key"}).status_code == 200


def test_non_ascii_and_quoted_names_download_with_an_encoded_disposition(server):
    name, data = 'dätä "✓".jsonl', chat_lines(10)  # via /v1/uploads: multipart clients percent-encode quotes
    upload = {"filename": name, "purpose": "fine-tune", "bytes": len(data), "mime_type": "text/jsonl"}
    up = server.http.post("/v1/uploads", json=upload).json()
    part = server.http.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("p", data)}).json()
    f = server.http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part["id"]]}).json()["file"]
    assert f["filename"] == name
    r = server.http.get(f"/v1/files/{f['id']}/content")
    assert r.status_code == 200 and r.content == data
    disposition = r.headers["content-disposition"]
    assert disposition.isascii() and '"✓"' not in disposition
    assert disposition.endswith("filename*=UTF-8''" + quote(name, safe=""))
    assert unquote(disposition.rsplit("''", 1)[1]) == name


@pytest.mark.parametrize(
    "name", ["a\r\nX-Evil: 1\r\n.jsonl", "a\nb.jsonl", "tab\there.jsonl", "nul\x00.jsonl", "..", "x/"]
)
def test_file_names_with_control_characters_are_refused(server, name):
    """A CR/LF in a stored name once ended the header line of its download: the connection dropped."""
    r = server.http.post(
        "/v1/uploads", json={"filename": name, "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {**r.json()["error"], "param": "filename", "code": "invalid_filename"}


def test_a_file_name_with_a_newline_in_multipart_is_refused(server):
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="file"; filename="a\nX-Evil: 1\n.jsonl"\r\n\r\n'
        ).encode()
        + chat_lines(10)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = server.http.post(
        "/v1/files", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_filename", r.text
    assert server.http.get("/v1/files").json()["data"] == []  # nothing was kept


def test_a_json_line_nested_too_deeply_is_a_line_error_everywhere(server):
    deep = b"[" * 200_000 + b"]" * 200_000
    f = server.http.post(
        "/v1/files", files={"file": ("deep.jsonl", deep + b"\n" + chat_lines(12))}, data={"purpose": "fine-tune"}
    ).json()
    f = _wait_file(server, f["id"])
    assert f["status"] == "error" and "line 1" in f["status_details"] and "nested too deeply" in f["status_details"]
    report = server.http.get(f"/v1/files/{f['id']}/validation").json()
    assert report["errors"]["listed"][0]["line"] == 1 and report["examples"] == 12
    body = {"model": TINY, "training_file": f["id"]}
    for path in ("/v1/fine_tuning/jobs/dry_run", "/v1/fine_tuning/jobs"):
        r = server.http.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_training_file" and "line 1" in r.json()["error"]["message"]
    assert server.http.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_a_file_whose_object_is_missing_is_a_503_before_any_byte(server):
    f = server.http.post("/v1/files", files={"file": ("a.jsonl", chat_lines(10))}, data={"purpose": "fine-tune"})
    server.app.state.ctx.store.delete(f"files/{f.json()['id']}")
    r = server.http.get(f"/v1/files/{f.json()['id']}/content")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "file_content_missing" and r.headers["x-should-retry"] == "false"


LONG = "x" * 300
# Each names an object by a value far longer than any id: a 400 or 404 that does not echo it whole.
LONG_VALUES = [
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": LONG * 20, "training_file": "file-abc"}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": TINY, "training_file": LONG * 20}}),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": TINY, "training_file": "f", "validation_file": LONG}}),
    ("POST", "/v1/fine_tuning/jobs/dry_run", {"json": {"model": "ft:" + LONG, "training_file": "file-abc"}}),
    ("POST", "/v1/chat/completions", {"json": {"model": LONG * 20, "messages": [{"role": "user", "content": "x"}]}}),
    ("GET", f"/v1/models/{LONG * 20}", {}),
    ("DELETE", f"/v1/models/ft:{LONG}", {}),
    ("GET", f"/v1/files/{LONG * 20}", {}),
    ("GET", f"/v1/files/{LONG}/content", {}),
    ("GET", "/v1/files/file-abc/validation", {"params": {"model": LONG}}),
    ("GET", "/v1/files/file-abc/validation", {"params": {"model": "é" * 300}}),
    ("GET", f"/v1/fine_tuning/jobs/{LONG * 20}", {}),
    ("POST", f"/v1/fine_tuning/jobs/{LONG}/cancel", {}),
    ("GET", f"/v1/fine_tuning/jobs/{LONG}/events", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), LONG_VALUES, ids=[f"{m} {p[:40]}" for m, p, _ in LONG_VALUES])
def test_oversized_names_are_refused_without_being_echoed(server, method, path, kwargs):
    r = server.http.request(method, path, **kwargs)
    assert r.status_code in (400, 404), r.text
    validate(r.json(), "ErrorResponse")
    assert LONG not in r.text and "é" * 300 not in r.text and len(r.text) < 1000
