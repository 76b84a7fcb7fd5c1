"""No request makes the server answer 500 or leak a traceback; every error is OpenAI-shaped with a request id."""

from __future__ import annotations

import pytest

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
