"""A corpus of hostile requests, each with the answer it must get: an OpenAI-shaped 4xx with the expected code (or the
expected success), never a 5xx, a traceback or a dropped connection; and the server is unharmed after all of them.

Rows are (name, method, path, request keyword arguments, expected status, expected error code or ``ANY`` when the
status alone is the contract). Requests carry the server's key unless the row sets its own ``authorization``; the
metadata store holds a key too, so a wrong key is looked up there as well.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import TINY, chat_lines
from tests.schema import validate

KEY = "sk-hostile-test-key-0123456789"
ANY = object()  # the status is the contract; the code may be null or any
BIG = "9" * 400  # a number far past any int64 or float
DEEP = "[" * 100_000 + "]" * 100_000
CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def chat(**changes: Any) -> dict[str, Any]:
    return {"json": {**CHAT, **changes}}


def job(**changes: Any) -> dict[str, Any]:
    return {"json": {"model": TINY, "training_file": "file-nope", **changes}}


def raw(body: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": content_type}}


def auth(value: str | bytes) -> dict[str, Any]:
    """This request's own Authorization header, bytes as given (empty: none)."""
    return {"auth": value if isinstance(value, bytes) else value.encode()}


def upload(**changes: Any) -> dict[str, Any]:
    return {"json": {"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl", **changes}}


def form(name: str = "a.jsonl", data: bytes = b"x", **fields: str) -> dict[str, Any]:
    return {"files": {"file": (name, data)}, "data": {"purpose": "fine-tune", **fields}}


CORPUS: list[tuple[str, str, str, dict[str, Any], int, Any]] = [
    # -- who is asking --------------------------------------------------------------------------------------------
    ("no key", "GET", "/v1/files", auth(b""), 401, None),
    ("token scheme", "GET", "/v1/files", auth("Token " + KEY), 401, None),
    ("basic auth", "GET", "/v1/files", auth("Basic dXNlcjpwYXNz"), 401, None),
    ("wrong key", "GET", "/v1/files", auth("Bearer sk-wrong"), 401, "invalid_api_key"),
    ("non-ascii key", "GET", "/v1/files", auth("Bearer sk-wrông".encode()), 401, "invalid_api_key"),
    ("latin-1 bytes key", "GET", "/v1/files", auth(b"Bearer sk-\xff\xfe"), 401, "invalid_api_key"),
    ("10k key", "GET", "/v1/files", auth("Bearer " + "k" * 10_000), 401, "invalid_api_key"),
    ("key prefix", "GET", "/v1/files", auth("Bearer " + KEY[:-1]), 401, "invalid_api_key"),
    ("key plus suffix", "GET", "/v1/files", auth("Bearer " + KEY + "x"), 401, "invalid_api_key"),
    ("bearer word only", "GET", "/v1/files", auth("Bearer"), 401, None),
    (
        "keyless big body",
        "POST",
        "/v1/fine_tuning/jobs",
        {**auth(b""), **raw(b"{" + b" " * 3_000_000 + b"}")},
        401,
        None,
    ),
    ("keyless upload", "POST", "/v1/files", {**auth(b""), **form()}, 401, None),
    ("lowercase scheme is fine", "GET", "/v1/files", auth("bearer " + KEY), 200, None),
    # -- ids that try to leave their place ------------------------------------------------------------------------
    ("traversal file id", "GET", "/v1/files/..%2F..%2Fetc%2Fpasswd", {}, 404, ANY),
    ("traversal file content", "GET", "/v1/files/..%2Fjobs%2Fx%2Fspec.json/content", {}, 404, ANY),
    ("dot-dot file id", "GET", "/v1/files/../files", {}, 200, None),  # the client resolves it: GET /v1/files
    ("encoded dots", "GET", "/v1/files/%2e%2e", {}, 404, ANY),
    ("backslash id", "GET", "/v1/files/..%5C..%5Cwin.ini", {}, 404, ANY),
    ("nul in file id", "GET", "/v1/files/file-%00", {}, 404, ANY),
    ("unicode file id", "GET", "/v1/files/file-%E2%80%AE", {}, 404, ANY),
    ("overlong file id", "GET", "/v1/files/" + "f" * 300, {}, 400, ANY),
    ("traversal job id", "GET", "/v1/fine_tuning/jobs/..%2F..%2Fsecret", {}, 404, ANY),
    ("traversal job events", "GET", "/v1/fine_tuning/jobs/%2E%2E/events", {}, 404, ANY),
    ("traversal job cancel", "POST", "/v1/fine_tuning/jobs/..%2Fftjob-x/cancel", {}, 404, ANY),
    ("overlong job id", "GET", "/v1/fine_tuning/jobs/" + "j" * 300, {}, 400, ANY),
    ("traversal model", "GET", "/v1/models/ft:..%2F..%2Fjobs", {}, 404, "model_not_found"),
    ("slashes model", "GET", "/v1/models/ft:a/b/../../c", {}, 404, "model_not_found"),
    ("delete traversal model", "DELETE", "/v1/models/ft:..%2Fx", {}, 404, "model_not_found"),
    ("delete base model", "DELETE", f"/v1/models/{TINY}", {}, 400, ANY),
    ("overlong model", "GET", "/v1/models/" + "m" * 300, {}, 400, ANY),
    ("traversal upload part", "POST", "/v1/uploads/..%2F..%2Fx/parts", form(), 404, ANY),
    ("traversal upload cancel", "POST", "/v1/uploads/%2E%2E/cancel", {}, 404, ANY),
    ("traversal report model", "GET", "/v1/files/file-x/validation", {"params": {"model": "../../x"}}, 404, ANY),
    ("cursor of another kind", "GET", "/v1/files", {"params": {"after": "ftjob-abc"}}, 200, None),
    ("nul cursor", "GET", "/v1/fine_tuning/jobs", {"params": {"after": "\x00"}}, 200, None),
    # -- bodies that are not what they say ------------------------------------------------------------------------
    ("invalid utf-8 json", "POST", "/v1/fine_tuning/jobs", raw(b'{"model": "\xff\xfe"}'), 400, ANY),
    ("utf-16 json", "POST", "/v1/fine_tuning/jobs", raw(json.dumps(job()["json"]).encode("utf-16")), 400, ANY),
    ("truncated json", "POST", "/v1/fine_tuning/jobs", raw(b'{"model": "x", '), 400, ANY),
    ("json array body", "POST", "/v1/fine_tuning/jobs", raw(b"[]"), 400, ANY),
    ("json null body", "POST", "/v1/fine_tuning/jobs", raw(b"null"), 400, ANY),
    ("json string body", "POST", "/v1/chat/completions", raw(b'"hello"'), 400, ANY),
    ("empty body", "POST", "/v1/chat/completions", raw(b""), 400, ANY),
    (
        "form body to json route",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b"model=x", "application/x-www-form-urlencoded"),
        400,
        ANY,
    ),
    ("xml body", "POST", "/v1/fine_tuning/jobs", raw(b"<job/>", "application/xml"), 400, ANY),
    ("deeply nested json body", "POST", "/v1/fine_tuning/jobs", raw(DEEP.encode()), 400, ANY),
    (
        "deep metadata",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b'{"model":"m","training_file":"f","metadata":' + DEEP.encode() + b"}"),
        400,
        ANY,
    ),
    (
        "deep chat content",
        "POST",
        "/v1/chat/completions",
        raw(b'{"model":"x","messages":' + DEEP.encode() + b"}"),
        400,
        ANY,
    ),
    ("NaN literal", "POST", "/v1/chat/completions", raw(b'{"model":"x","messages":[],"temperature":NaN}'), 400, ANY),
    (
        "Infinity literal",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b'{"model":"m","training_file":"f","hyperparameters":{"learning_rate_multiplier":Infinity}}'),
        400,
        ANY,
    ),
    (
        "duplicate keys",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b'{"model":"a","model":"' + TINY.encode() + b'","training_file":"file-nope"}'),
        400,
        "invalid_file_id",
    ),
    ("body over the cap", "POST", "/v1/chat/completions", raw(b" " * (5 << 20)), 413, "request_too_large"),
    (
        "json with a bom",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b"\xef\xbb\xbf" + json.dumps(job()["json"]).encode()),
        400,
        ANY,
    ),
    # -- numbers past every range ---------------------------------------------------------------------------------
    (
        "huge n_epochs",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b'{"model":"m","training_file":"f","hyperparameters":{"n_epochs":' + BIG.encode() + b"}}"),
        400,
        ANY,
    ),
    ("float n_epochs", "POST", "/v1/fine_tuning/jobs", job(hyperparameters={"n_epochs": 2.5}), 400, ANY),
    ("negative batch", "POST", "/v1/fine_tuning/jobs", job(hyperparameters={"batch_size": -4}), 400, ANY),
    (
        "zero lr multiplier",
        "POST",
        "/v1/fine_tuning/jobs",
        job(hyperparameters={"learning_rate_multiplier": 0}),
        400,
        ANY,
    ),
    (
        "huge lr multiplier",
        "POST",
        "/v1/fine_tuning/jobs",
        job(hyperparameters={"learning_rate_multiplier": 1e300}),
        400,
        ANY,
    ),
    ("negative seed", "POST", "/v1/fine_tuning/jobs", job(seed=-1), 400, ANY),
    ("seed past int32", "POST", "/v1/fine_tuning/jobs", job(seed=2**40), 400, ANY),
    (
        "huge seed literal",
        "POST",
        "/v1/fine_tuning/jobs",
        raw(b'{"model":"m","training_file":"f","seed":' + BIG.encode() + b"}"),
        400,
        ANY,
    ),
    ("huge max_tokens", "POST", "/v1/chat/completions", chat(max_tokens=2**64), 400, ANY),
    ("zero max_tokens", "POST", "/v1/chat/completions", chat(max_tokens=0), 400, ANY),
    ("temperature past 2", "POST", "/v1/chat/completions", chat(temperature=2.5), 400, ANY),
    (
        "huge temperature literal",
        "POST",
        "/v1/chat/completions",
        raw(json.dumps(CHAT).encode()[:-1] + b',"temperature":1e999}'),
        400,
        ANY,
    ),
    ("top_p past 1", "POST", "/v1/chat/completions", chat(top_p=1.5), 400, ANY),
    ("n of 1000", "POST", "/v1/chat/completions", chat(n=1000), 400, ANY),
    ("huge limit is a full page", "GET", "/v1/fine_tuning/jobs", {"params": {"limit": BIG}}, 200, None),
    ("negative limit", "GET", "/v1/files", {"params": {"limit": -1}}, 400, ANY),
    ("float limit", "GET", "/v1/fine_tuning/jobs", {"params": {"limit": "1.5"}}, 400, ANY),
    ("upload of -1 bytes", "POST", "/v1/uploads", upload(bytes=-1), 400, ANY),
    ("upload of 10^20 bytes", "POST", "/v1/uploads", upload(bytes=10**20), 400, ANY),
    (
        "expiry of 0 s",
        "POST",
        "/v1/files",
        form(**{"expires_after[anchor]": "created_at", "expires_after[seconds]": "0"}),
        400,
        ANY,
    ),
    (
        "expiry of 10^30 s",
        "POST",
        "/v1/files",
        form(**{"expires_after[anchor]": "created_at", "expires_after[seconds]": BIG}),
        400,
        ANY,
    ),
    # -- wrong shapes ---------------------------------------------------------------------------------------------
    ("model as list", "POST", "/v1/fine_tuning/jobs", job(model=[TINY]), 400, ANY),
    ("training_file as int", "POST", "/v1/fine_tuning/jobs", job(training_file=5), 400, ANY),
    ("hyperparameters as list", "POST", "/v1/fine_tuning/jobs", job(hyperparameters=[1]), 400, ANY),
    ("method type null", "POST", "/v1/fine_tuning/jobs", job(method={"type": None}), 400, ANY),
    ("method type unknown", "POST", "/v1/fine_tuning/jobs", job(method={"type": "magic"}), 400, ANY),
    ("suffix of 100 chars", "POST", "/v1/fine_tuning/jobs", job(suffix="s" * 100), 400, ANY),
    ("17 metadata keys", "POST", "/v1/fine_tuning/jobs", job(metadata={f"k{i}": "v" for i in range(17)}), 400, ANY),
    ("metadata value of 600", "POST", "/v1/fine_tuning/jobs", job(metadata={"k": "v" * 600}), 400, ANY),
    ("metadata nested", "POST", "/v1/fine_tuning/jobs", job(metadata={"k": {"x": 1}}), 400, ANY),
    ("unknown tunery field", "POST", "/v1/fine_tuning/jobs", job(tunery={"trainnig": {}}), 400, ANY),
    ("integration of unknown type", "POST", "/v1/fine_tuning/jobs", job(integrations=[{"type": "x"}]), 400, ANY),
    ("unknown base model", "POST", "/v1/fine_tuning/jobs", job(model="gpt-99"), 400, "model_not_available"),
    ("unknown ft model", "POST", "/v1/fine_tuning/jobs", job(model="ft:x:y::z"), 400, "model_not_available"),
    ("unknown training file", "POST", "/v1/fine_tuning/jobs", job(), 400, "invalid_file_id"),
    ("dry run of unknown file", "POST", "/v1/fine_tuning/jobs/dry_run", job(), 400, "invalid_file_id"),
    # -- routes and methods ---------------------------------------------------------------------------------------
    ("unknown route", "GET", "/v1/nothing-here", {}, 404, ANY),
    ("PUT on files", "PUT", "/v1/files", {}, 405, ANY),
    ("DELETE on job list", "DELETE", "/v1/fine_tuning/jobs", {}, 405, ANY),
    ("PATCH a job", "PATCH", "/v1/fine_tuning/jobs/ftjob-x", {}, 405, ANY),
    # (A method the HTTP parser does not know, FROBNICATE, never reaches the app: httptools answers 400 itself.)
    ("odd method", "PROPFIND", "/v1/files", {}, 405, ANY),
    ("double slash", "GET", "//v1/files", {}, 404, ANY),
    ("trailing slash redirects", "GET", "/v1/files/", {}, 307, None),
    ("cancel unknown job", "POST", "/v1/fine_tuning/jobs/ftjob-nope/cancel", {}, 404, ANY),
    ("pause unknown job", "POST", "/v1/fine_tuning/jobs/ftjob-nope/pause", {}, 404, ANY),
    ("events of unknown job", "GET", "/v1/fine_tuning/jobs/ftjob-nope/events", {}, 404, ANY),
    ("checkpoints of unknown job", "GET", "/v1/fine_tuning/jobs/ftjob-nope/checkpoints", {}, 404, ANY),
    # -- files and uploads ----------------------------------------------------------------------------------------
    ("file without purpose", "POST", "/v1/files", {"files": {"file": ("a.jsonl", b"x")}}, 400, ANY),
    ("file of unknown purpose", "POST", "/v1/files", {**form(), "data": {"purpose": "everything"}}, 400, ANY),
    ("purpose without file", "POST", "/v1/files", {"data": {"purpose": "fine-tune"}}, 400, ANY),
    ("empty file", "POST", "/v1/files", form(data=b""), 400, ANY),
    ("training file not jsonl", "POST", "/v1/files", form(name="a.exe"), 400, ANY),
    ("multipart without boundary", "POST", "/v1/files", raw(b"--x\r\n", "multipart/form-data"), 400, ANY),
    ("multipart garbage", "POST", "/v1/files", raw(b"\x00\x01garbage", "multipart/form-data; boundary=zz"), 400, ANY),
    (
        "crlf in upload name",
        "POST",
        "/v1/uploads",
        upload(filename="a\r\nX-Injected: 1\r\n.jsonl"),
        400,
        "invalid_filename",
    ),
    ("nul in upload name", "POST", "/v1/uploads", upload(filename="a\x00.jsonl"), 400, "invalid_filename"),
    ("only dots upload name", "POST", "/v1/uploads", upload(filename=".."), 400, "invalid_filename"),
    ("mime type of 10k", "POST", "/v1/uploads", upload(mime_type="t" * 10_000), 400, ANY),
    ("part of unknown upload", "POST", "/v1/uploads/upload_nope/parts", form(), 404, ANY),
    (
        "complete unknown upload",
        "POST",
        "/v1/uploads/upload_nope/complete",
        {"json": {"part_ids": ["part_x"]}},
        404,
        ANY,
    ),
    ("cancel unknown upload", "POST", "/v1/uploads/upload_nope/cancel", {}, 404, ANY),
    ("download unknown file", "GET", "/v1/files/file-nope/content", {}, 404, ANY),
    ("report of unknown file", "GET", "/v1/files/file-nope/validation", {}, 404, ANY),
    # -- chat -----------------------------------------------------------------------------------------------------
    ("no messages", "POST", "/v1/chat/completions", chat(messages=[]), 400, ANY),
    ("messages as string", "POST", "/v1/chat/completions", chat(messages="hi"), 400, ANY),
    ("unknown role", "POST", "/v1/chat/completions", chat(messages=[{"role": "god", "content": "x"}]), 400, ANY),
    (
        "content of unknown part",
        "POST",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [{"type": "hologram"}]}]),
        400,
        ANY,
    ),
    ("unknown model", "POST", "/v1/chat/completions", chat(model="gpt-99"), 404, "model_not_found"),
    ("model missing", "POST", "/v1/chat/completions", {"json": {"messages": CHAT["messages"]}}, 400, ANY),
    ("tool_choice without tools", "POST", "/v1/chat/completions", chat(tool_choice="auto"), 400, ANY),
    (
        "stream_options without stream",
        "POST",
        "/v1/chat/completions",
        chat(stream_options={"include_usage": True}),
        400,
        ANY,
    ),
    ("logit_bias of words", "POST", "/v1/chat/completions", chat(logit_bias={"hello": 5}), 400, ANY),
    ("logit_bias past 100", "POST", "/v1/chat/completions", chat(logit_bias={"1": 1000}), 400, ANY),
    ("stop of 10 strings", "POST", "/v1/chat/completions", chat(stop=[str(i) for i in range(10)]), 400, ANY),
    ("response_format unknown", "POST", "/v1/chat/completions", chat(response_format={"type": "yaml"}), 400, ANY),
    ("seed as string", "POST", "/v1/chat/completions", chat(seed="one"), 400, ANY),
    ("tools malformed", "POST", "/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, ANY),
    # -- the administration API ------------------------------------------------------------------------------------
    ("admin: overlong project id", "GET", "/v1/organization/projects/" + "p" * 300, {}, 400, ANY),
    ("admin: unknown project", "GET", "/v1/organization/projects/proj_nope", {}, 404, None),
    ("admin: project without name", "POST", "/v1/organization/projects", {"json": {}}, 400, ANY),
    ("admin: blank project name", "POST", "/v1/organization/projects", {"json": {"name": "   "}}, 400, ANY),
    ("admin: 10k project name", "POST", "/v1/organization/projects", {"json": {"name": "n" * 10_000}}, 400, ANY),
    ("admin: archive the default", "POST", "/v1/organization/projects/proj_default/archive", {}, 400, ANY),
    (
        "admin: unknown role",
        "POST",
        "/v1/organization/projects/proj_default/service_accounts",
        {"json": {"name": "x", "role": "god"}},
        400,
        ANY,
    ),
    (
        "admin: negative expiry",
        "POST",
        "/v1/organization/admin_api_keys",
        {"json": {"name": "x", "expires_in_seconds": -1}},
        400,
        ANY,
    ),
    (
        "admin: expiry past any int",
        "POST",
        "/v1/organization/admin_api_keys",
        raw(b'{"name": "x", "expires_in_seconds": ' + BIG.encode() + b"}"),
        400,
        ANY,
    ),
    ("admin: unknown admin key", "DELETE", "/v1/organization/admin_api_keys/key_nope", {}, 404, None),
    ("admin: unknown project key", "GET", "/v1/organization/projects/proj_default/api_keys/key_nope", {}, 404, None),
    ("admin: limit 0", "GET", "/v1/organization/projects?limit=0", {}, 400, ANY),
    ("admin: order sideways", "GET", "/v1/organization/admin_api_keys?order=sideways", {}, 400, ANY),
    ("audit: effective_at not a number", "GET", "/v1/organization/audit_logs?effective_at[gte]=soon", {}, 400, ANY),
    ("audit: limit 0", "GET", "/v1/organization/audit_logs?limit=0", {}, 400, ANY),
    ("audit: unknown cursor", "GET", "/v1/organization/audit_logs?after=audit_log-nope&before=x", {}, 200, None),
    ("audit: 10k event type", "GET", "/v1/organization/audit_logs?event_types[]=" + "t" * 10_000, {}, 200, None),
]


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Any) -> Any:
    from tests.conftest import start_server

    tmp = tmp_path_factory.mktemp("hostile")
    srv = start_server(
        tmp / "data",
        base_models={TINY: str(tiny_model_dir)},
        demo_model=False,
        model_cache_dir=tmp / "cache",
        api_keys=[KEY],
    )
    srv.http.headers["authorization"] = f"Bearer {KEY}"
    # A key in the metadata store: every wrong key of the corpus is then looked up there too.
    made = srv.http.post(
        "/v1/organization/projects/proj_default/service_accounts", json={"name": "r", "role": "reader"}
    )
    assert made.status_code == 200, made.text
    yield srv
    srv.stop()


def test_the_corpus_is_large_and_unique() -> None:
    assert len(CORPUS) >= 100
    assert len({name for name, *_ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("name", "method", "path", "kwargs", "status", "code"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request(hostile_server: Any, name: str, method: str, path: str, kwargs: dict[str, Any], status: int,
                         code: Any) -> None:  # fmt: skip
    kwargs = dict(kwargs)
    if "auth" in kwargs:  # this request's own authorization, not the server's key
        r = _raw(hostile_server, method, path, kwargs.pop("auth"), kwargs)
    else:
        r = hostile_server.http.request(method, path, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert r.headers.get("x-request-id")
    if status >= 400:
        body = r.json()
        validate(body, "ErrorResponse")
        if code is not ANY:
            assert body["error"]["code"] == code, (name, body)


def _raw(srv: Any, method: str, path: str, authorization: bytes, kwargs: dict[str, Any]) -> Any:
    """The request with exactly this Authorization header (none when empty) and the row's own headers."""
    import httpx

    headers = [(k.encode(), v.encode()) for k, v in kwargs.pop("headers", {}).items()]
    if authorization:
        headers.append((b"authorization", authorization))
    with httpx.Client(base_url=srv.base_url, timeout=60) as client:
        return client.request(method, path, headers=headers, **kwargs)


def test_the_server_is_unharmed_after_the_corpus(hostile_server: Any) -> None:
    """Runs after the corpus (file order): nothing was created by it, and the server works."""
    assert hostile_server.http.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert all(
        f["filename"] != "a.jsonl" or f["bytes"] > 1 for f in hostile_server.http.get("/v1/files").json()["data"]
    )
    f = hostile_server.http.post("/v1/files", **form("ok.jsonl", chat_lines(10))).json()
    assert hostile_server.http.get(f"/v1/files/{f['id']}").json()["bytes"] == len(chat_lines(10))
    assert hostile_server.http.get("/health").status_code == 200
