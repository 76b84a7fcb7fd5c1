"""Hostile requests a real server must shrug off (issue 11): series in /metrics a client cannot multiply, bodies
refused before they are read (no key, over the size cap), uploads stopped at their limit while they stream.

The large bodies go over a raw socket that reads while it sends (tests/raw_http.py): a server that answers at once
is told from one that reads everything first by how much of the body went out before its answer.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import raw_http
from tests.conftest import RunningServer
from tests.raw_http import MiB, filler
from tests.schema import validate
from tests.stores import stored_keys
from tunery.metrics import HTTP_METHODS

KEY = "sk-hardening-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "content-type": "application/json"}
# A body this large, answered before this much of it went out, was not read: the socket buffers between client and
# server hold a few MiB at most.
BIG, EARLY = 64 * MiB, 16 * MiB


def http_series(srv: RunningServer) -> list[dict[str, str]]:
    text = srv.http.get("/metrics").text
    return [
        s.labels
        for family in text_string_to_metric_families(text)
        if family.name == "tunery_http_requests"
        for s in family.samples
        if s.name == "tunery_http_requests_total"
    ]


def openai_error(answer: raw_http.Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:500])
    validate(answer.json(), "ErrorResponse")
    assert answer.headers["x-request-id"]
    return dict(answer.json()["error"])


def json_body(size: int) -> tuple[dict[str, str], list[bytes]]:
    """Headers and chunks of a JSON body of ``size`` bytes (a job request with a long array in it)."""
    prefix, suffix = b'{"model": "m", "training_file": "f", "suffix": [', b"0]}"
    n = size - len(prefix) - len(suffix)
    chunks = [prefix + b" " * (n % 2), *filler(n - n % 2), suffix]  # [0,0,...,0]
    return {"content-type": "application/json", "content-length": str(size)}, chunks


def port(srv: RunningServer) -> int:
    return int(srv.settings.port)


# -- /metrics: labels from a closed set -----------------------------------------------------------------------------


OTHER_METHODS = ("PROPFIND", "MKCOL", "LOCK", "PURGE", "SEARCH", "REPORT", "M-SEARCH", "UNLINK")


def test_hostile_requests_add_no_metric_series(tiny_server_factory):
    srv = tiny_server_factory(api_keys=KEY)
    assert srv.http.get("/health").status_code == 200
    before = len(http_series(srv))
    for i in range(300):
        # A method outside HTTP_METHODS: WebDAV's and others, which every HTTP parser passes on (405, "other");
        # made-up ones, which httptools' parser refuses itself (400, never reaching the app) and h11 passes on.
        assert srv.http.request(OTHER_METHODS[i % len(OTHER_METHODS)], "/health").status_code == 405
        assert srv.http.request(f"M{i}", "/health").status_code in (400, 405)
        assert srv.http.get(f"/v1/models/x{i}/y/z").status_code == 401
        assert srv.http.get(f"/v1/models/ft:x{i}", headers=AUTH).status_code == 404
        assert srv.http.request(OTHER_METHODS[i % len(OTHER_METHODS)], f"/nowhere/{i}").status_code == 404
        assert srv.http.request(f"X{i}", f"/nowhere/{i}").status_code in (400, 404)
    series = http_series(srv)
    # 6 x 300 requests: 4 new series (one per kind), and the scrapes'.
    assert len(series) <= before + 5, sorted(map(str, series))
    labels = {(s["method"], s["route"], s["status"]) for s in series}
    assert {
        ("other", "/health", "405"),
        ("GET", "/v1/models/{model:path}", "401"),
        ("GET", "/v1/models/{model:path}", "404"),
        ("other", "unmatched", "404"),
    } <= labels
    assert {s["method"] for s in series} <= HTTP_METHODS | {"other"}
    assert {s["route"] for s in series} <= {"/v1/models/{model:path}", "/health", "/metrics", "unmatched"}


# -- the key before the body ----------------------------------------------------------------------------------------


def test_a_keyless_body_gets_its_401_before_it_is_read(tiny_server_factory):
    srv = tiny_server_factory(api_keys=KEY)
    headers, chunks = json_body(BIG)
    # Announced or chunked, to a JSON route or an upload route: the 401 comes first, OpenAI's as ever.
    ctype, before, after = raw_http.multipart("file", purpose="fine-tune")
    upload = [before, *filler(BIG, b"x" * MiB), after]
    for method, path, head, body, chunked in [
        ("POST", "/v1/fine_tuning/jobs", headers, chunks, False),
        ("POST", "/v1/fine_tuning/jobs", {"content-type": "application/json"}, chunks, True),
        ("POST", "/v1/files", {"content-type": ctype}, upload, True),
        ("POST", "/v1/uploads/upload_x/parts", {"content-type": ctype}, upload, True),
    ]:
        answer = raw_http.send(port(srv), method, path, head, body, chunked=chunked)
        err = openai_error(answer, 401)
        assert (err["type"], err["code"]) == ("invalid_request_error", None)
        assert err["message"].startswith("You didn't provide an API key.")
        assert answer.sent < EARLY, (path, answer.sent)
        assert answer.headers["connection"] == "close"  # the rest of the body is not read either

    wrong = raw_http.send(
        port(srv), "POST", "/v1/fine_tuning/jobs", {**headers, "authorization": "Bearer sk-no"}, chunks
    )
    assert openai_error(wrong, 401)["code"] == "invalid_api_key" and wrong.sent < EARLY
    assert srv.client.with_options(api_key=KEY).files.list().data == [] and stored_keys(srv, "files/") == []
    # A body read to its end keeps the connection for the next request.
    r = srv.http.post("/v1/uploads", json={"bytes": 1}, headers=AUTH)
    assert r.status_code == 400 and "connection" not in r.headers


# -- the size of a body ---------------------------------------------------------------------------------------------


def test_json_bodies_are_capped_by_length_and_while_counting(tiny_server_factory):
    srv = tiny_server_factory(api_keys=KEY, max_body_bytes=64 * 1024)
    headers, chunks = json_body(BIG)
    announced = raw_http.send(port(srv), "POST", "/v1/fine_tuning/jobs", {**headers, **AUTH}, chunks)
    streamed = raw_http.send(
        port(srv), "POST", "/v1/chat/completions", {"content-type": "application/json", **AUTH}, chunks, chunked=True
    )
    for answer in (announced, streamed):
        err = openai_error(answer, 413)
        assert err["code"] == "request_too_large" and str(64 * 1024) in err["message"]
        assert answer.sent < EARLY, answer.sent

    # A client that sends everything before it reads (the SDK's httpx) gets the 413 too, not the 400 the route makes
    # of a body cut short.
    def chunked_json(n: int) -> Any:
        yield b'{"model": "nope", "messages": [{"role": "user", "content": "'
        yield b"x" * n
        yield b'"}]}'

    r = srv.http.post("/v1/chat/completions", content=chunked_json(200_000), headers=JSON)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert r.headers["x-request-id"]
    # Under the cap, announced or chunked, the route answers as ever.
    job = {"model": "nope", "training_file": "file-x", "suffix": "s" * 40_000}
    r = srv.http.post("/v1/fine_tuning/jobs", json=job, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix", r.text  # read and validated
    r = srv.http.post("/v1/chat/completions", content=chunked_json(40_000), headers=JSON)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    m = {(s["method"], s["route"], s["status"]) for s in http_series(srv)}
    assert ("POST", "/v1/fine_tuning/jobs", "413") in m and ("POST", "/v1/chat/completions", "413") in m


# -- uploads stop at their limit ------------------------------------------------------------------------------------


def test_a_chunked_file_stops_at_the_file_limit(tiny_server_factory):
    srv = tiny_server_factory(max_file_bytes=1 * MiB)
    ctype, before, after = raw_http.multipart("file", purpose="fine-tune")
    answer = raw_http.send(
        port(srv), "POST", "/v1/files", {"content-type": ctype}, [before, *filler(BIG, b"x" * MiB), after], chunked=True
    )
    err = openai_error(answer, 413)
    assert (err["code"], err["param"]) == ("file_too_large", "file")
    assert answer.sent < EARLY, answer.sent
    # The SDK (httpx: it sends the whole body before it reads) gets the 413 as well: the server closes the connection
    # instead of reading the rest of a body it has refused, and httpx reads the answer when its write fails.
    with pytest.raises(openai.APIStatusError) as e:
        srv.client.files.create(file=("t.jsonl", b"x" * BIG), purpose="fine-tune")
    assert e.value.status_code == 413 and e.value.code == "file_too_large"
    assert srv.client.files.list().data == [] and stored_keys(srv, "files/") == []
    # Within the limit, chunked, the file is stored whole.
    data = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 9000
    ok = raw_http.send(port(srv), "POST", "/v1/files", {"content-type": ctype}, [before, data, after], chunked=True)
    assert ok.status == 200, ok.body
    assert srv.client.files.content(ok.json()["id"]).read() == data


def _create(srv: RunningServer, size: int) -> str:
    body = {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": size, "mime_type": "text/jsonl"}
    r = srv.http.post("/v1/uploads", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _part(srv: RunningServer, upload_id: str, size: int, chunked: bool = False) -> raw_http.Answer:
    ctype, before, after = raw_http.multipart("data")
    body = [before, *filler(size, b"x" * MiB), after]
    headers = {"content-type": ctype}
    if not chunked:
        headers["content-length"] = str(len(before) + size + len(after))
    return raw_http.send(port(srv), "POST", f"/v1/uploads/{upload_id}/parts", headers, body, chunked=chunked)


def test_a_part_is_refused_before_its_body_is_read(server):
    # An unknown upload: 404 before a byte of the 60 MiB part (under the 64 MiB part limit) is read.
    for chunked in (False, True):
        answer = _part(server, "upload_nope", 60 * MiB, chunked=chunked)
        assert "upload_nope" in openai_error(answer, 404)["message"]
        assert answer.sent < EARLY, answer.sent
    # A completed upload: 400 at once.
    done = _create(server, 4)
    first = server.http.post(f"/v1/uploads/{done}/parts", files={"data": ("blob", b"abcd")}).json()["id"]
    assert server.http.post(f"/v1/uploads/{done}/complete", json={"part_ids": [first]}).status_code == 200
    answer = _part(server, done, 60 * MiB)
    assert openai_error(answer, 400)["code"] == "upload_not_pending" and answer.sent < EARLY
    assert stored_keys(server, "uploads/") == []


def test_parts_may_not_pass_the_declared_bytes(server):
    up = _create(server, 3000)
    # Past what the upload declared: from the Content-Length at once, or as the count passes it (chunked).
    for chunked in (False, True):
        answer = _part(server, up, 40 * MiB, chunked=chunked)
        err = openai_error(answer, 413)
        assert (err["code"], err["param"]) == ("upload_bytes_exceeded", "data") and "bytes=3000" in err["message"]
        assert answer.sent < EARLY, answer.sent
    # Just over (within the form's allowance, so read): refused once counted, nothing kept.
    assert openai_error(_part(server, up, 3001), 413)["code"] == "upload_bytes_exceeded"
    assert stored_keys(server, f"uploads/{up}/") == []

    # Parts racing for the room left: all three are past the upload's look-up, their bodies half sent, when they
    # go on; the two that fit get in, the third is refused when it is registered.
    go = threading.Event()
    ctype, before, after = raw_http.multipart("data")

    def held_part(_: int) -> int:
        def body() -> Any:
            yield before + b"p" * 600
            go.wait(30)
            yield b"p" * 600 + after

        size = str(len(before) + 1200 + len(after))
        headers = {"content-type": ctype, "content-length": size}
        return raw_http.send(port(server), "POST", f"/v1/uploads/{up}/parts", headers, body()).status

    with ThreadPoolExecutor(3) as pool:
        codes = pool.map(held_part, range(3))
        time.sleep(1.0)
        go.set()
        assert sorted(codes) == [200, 200, 413]
    last = server.http.post(f"/v1/uploads/{up}/parts", files={"data": ("blob", b"q" * 600)})
    assert last.status_code == 200, last.text
    full = server.http.post(f"/v1/uploads/{up}/parts", files={"data": ("blob", b"r")})
    assert full.status_code == 413 and "0 more fit" in full.json()["error"]["message"]
    assert len(stored_keys(server, f"uploads/{up}/")) == 3
