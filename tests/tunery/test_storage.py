"""The object store interface against both implementations (local folder, S3 on a real SeaweedFS), and what only
S3 has: signatures checked, presigned URLs that expire, multipart writes aborted on failure, server-side
assembly of upload parts, retries on throttling and 5xx."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tunery.settings import Settings
from tunery.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    content_disposition,
    open_store,
    store_environment,
)
from tunery.storage_s3 import MIN_PART, S3ObjectStore

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return request.getfixturevalue("seaweedfs").store(part_size=MIN_PART)  # type: ignore[no-any-return]


@pytest.fixture
def s3(seaweedfs: Any) -> S3ObjectStore:
    return seaweedfs.store(part_size=MIN_PART)  # type: ignore[no-any-return]


def count_calls(store: S3ObjectStore, operation: str) -> list[str]:
    """Record each call of one S3 operation the store's client makes (botocore's event hooks)."""
    calls: list[str] = []
    store.client.meta.events.register(f"before-call.s3.{operation}", lambda **kw: calls.append(operation))
    return calls


def blob(n: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


def test_interface(store: ObjectStore, tmp_path: Path):
    assert store.put_bytes("a/b/c.txt", b"hello") == (5, hashlib.sha256(b"hello").hexdigest())
    store.put_bytes("a/b/d.txt", b"")
    store.put_bytes("a/e.txt", b"x" * 10)
    store.put_bytes("ab.txt", b"y")
    assert store.list("a/") == ["a/b/c.txt", "a/b/d.txt", "a/e.txt"]
    assert store.list("a") == ["a/b/c.txt", "a/b/d.txt", "a/e.txt", "ab.txt"]
    assert store.get_bytes("a/b/c.txt") == b"hello" and store.get_bytes("a/b/d.txt") == b""
    assert store.size("a/e.txt") == 10 and store.exists("a/e.txt") and not store.exists("a/nope")
    with pytest.raises(ObjectNotFound):
        store.open("a/nope")
    with pytest.raises(ObjectNotFound):
        store.size("a/nope")
    with pytest.raises(ValueError):
        store.put_bytes("../escape", b"x")

    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "one.json").write_text("{}")
    (src / "sub" / "two.bin").write_bytes(blob(3000))
    assert store.put_dir("ckpt/step-1", src) == ["ckpt/step-1/one.json", "ckpt/step-1/sub/two.bin"]
    out = store.get_dir("ckpt/step-1", tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in out) == ["one.json", "sub/two.bin"]
    assert (tmp_path / "back" / "sub" / "two.bin").read_bytes() == blob(3000)

    store.delete("a/e.txt")
    store.delete("a/e.txt")  # missing: ignored
    assert store.delete_prefix("a/") == 2 and store.list("a/") == []
    assert store.incomplete("") == []


def test_streamed_write_is_atomic(store: ObjectStore):
    """A stream that fails half-way leaves nothing behind: no object, no temporary file, no multipart upload."""

    def failing() -> Iterator[bytes]:
        for _ in range(7):  # 7 MiB: past the first S3 part
            yield b"z" * MiB
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        store.put_stream("files/broken", failing())
    assert store.list("files/") == [] and store.incomplete("files/") == []


def test_compose_streams_small_parts(store: ObjectStore):
    parts = [blob(1000 + i, i) for i in range(3)]
    for i, p in enumerate(parts):
        store.put_bytes(f"parts/{i}", p)
    md5 = hashlib.md5(usedforsecurity=False)
    copies = count_calls(store, "UploadPartCopy") if isinstance(store, S3ObjectStore) else []
    size, sha = store.compose("files/out", ["parts/2", "parts/0", "parts/1"], md5.update)
    want = parts[2] + parts[0] + parts[1]
    assert (size, sha) == (len(want), hashlib.sha256(want).hexdigest())
    assert md5.hexdigest() == hashlib.md5(want, usedforsecurity=False).hexdigest()
    assert store.get_bytes("files/out") == want
    assert copies == []  # parts under 5 MiB cannot be S3 parts: streamed through


def test_s3_compose_copies_large_parts_server_side(s3: S3ObjectStore):
    parts = [blob(MIN_PART, 1), blob(MIN_PART + 7, 2), blob(1234, 3)]
    for i, p in enumerate(parts):
        s3.put_bytes(f"parts/{i}", p)
    copies, puts = count_calls(s3, "UploadPartCopy"), count_calls(s3, "UploadPart")
    md5 = hashlib.md5(usedforsecurity=False)
    size, sha = s3.compose("files/big", ["parts/1", "parts/0", "parts/2"], md5.update)
    want = parts[1] + parts[0] + parts[2]
    assert (size, sha) == (len(want), hashlib.sha256(want).hexdigest())
    assert md5.hexdigest() == hashlib.md5(want, usedforsecurity=False).hexdigest()
    assert len(copies) == 3 and puts == []  # no byte went back up through us
    assert s3.get_bytes("files/big") == want and s3.incomplete("") == []


def test_s3_multipart_write_and_chunked_read(s3: S3ObjectStore):
    data = blob(12 * MiB + 5)
    parts = count_calls(s3, "UploadPart")
    size, sha = s3.put_stream("big", (data[i : i + 300_000] for i in range(0, len(data), 300_000)))
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert len(parts) == 3  # 5 MiB + 5 MiB + the rest
    chunks = list(s3.iter_chunks("big", MiB))
    assert max(map(len, chunks)) <= MiB and b"".join(chunks) == data


def test_s3_signatures_are_checked(seaweedfs: Any):
    good = seaweedfs.store("sig")
    good.put_bytes("x", b"secret data")
    bad = seaweedfs.store("sig", secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as e:
        bad.get_bytes("x")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ObjectStoreError):
        bad.check()
    stranger = seaweedfs.store("sig", access_key_id="nobody", secret_access_key="x")
    with pytest.raises(ClientError) as e:
        stranger.put_bytes("y", b"1")
    assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert httpx.get(f"{seaweedfs.endpoint_url}/{seaweedfs.bucket}/sig/x").status_code == 403  # unsigned


def test_s3_presigned_url_expires(s3: S3ObjectStore):
    s3.put_bytes("files/report.csv", b"step,loss\n1,0.5\n")
    url = s3.presigned_url("files/report.csv", filename="report.csv")
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"step,loss\n1,0.5\n"
    assert r.headers["content-disposition"] == content_disposition("report.csv")
    assert content_disposition("report.csv") == "attachment; filename=\"report.csv\"; filename*=UTF-8''report.csv"
    assert httpx.get(url.replace("report.csv?", "other.csv?", 1)).status_code == 403  # the signature covers the key
    # The signing time has whole seconds, so a 1 s URL may be stale at once on a busy machine: give it 3 s.
    short = s3.presigned_url("files/report.csv", expires_in=3)
    assert httpx.get(short).status_code == 200
    time.sleep(4.5)
    assert httpx.get(short).status_code == 403  # expired: SeaweedFS refuses it


def test_s3_missing_bucket_is_a_clear_error(seaweedfs: Any):
    store = seaweedfs.store()
    store.bucket = "no-such-bucket-here"
    with pytest.raises(ObjectStoreError, match="does not exist"):
        store.check()


def test_open_store_from_url_and_settings():
    settings = Settings(
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key_id="AK",
        s3_secret_access_key="SK",
        s3_addressing_style="path",
        s3_retry_mode="adaptive",
        s3_max_attempts=7,
        object_store="s3://bkt/some/prefix/",
    )
    store = open_store("s3://bkt/some/prefix/", settings)
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix, store.url) == ("bkt", "some/prefix", "s3://bkt/some/prefix")
    assert store.client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert store.client.meta.config.s3 == {"addressing_style": "path"}
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9" and store.client.meta.region_name == "us-east-1"
    env = store_environment(settings)
    assert env["TUNERY_S3_ACCESS_KEY_ID"] == "AK" and env["TUNERY_S3_MAX_ATTEMPTS"] == "7"
    assert env["TUNERY_S3_SECRET_ACCESS_KEY"] == "SK" and "SK" not in repr(settings)
    assert store_environment(Settings(object_store="/tmp/x")) == {}
    with pytest.raises(ValueError):
        open_store("s3:///prefix-without-bucket", settings)
    with pytest.raises(ValueError):
        open_store("gs://bucket/x", settings)


class FlakyProxy:
    """A loopback proxy in front of SeaweedFS that answers the first ``failures`` requests with an S3 error
    (503 SlowDown by default), then forwards requests unchanged (the Host header too, so signatures hold)."""

    def __init__(self, upstream: str, failures: int, status: int = 503, code: str = "SlowDown"):
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                proxy.seen += 1
                if proxy.seen <= failures:
                    err = f"<Error><Code>{code}</Code><Message>try again</Message></Error>".encode()
                    self.send_response(status)
                    self.send_header("content-length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
                r = httpx.request(self.command, upstream + self.path, headers=dict(self.headers), content=body)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_s3_retries_throttling_and_5xx(seaweedfs: Any, status: int, code: str):
    seaweedfs.store("retry").put_bytes("obj", b"payload")
    proxy = FlakyProxy(seaweedfs.endpoint_url, failures=2, status=status, code=code)
    try:
        patient = seaweedfs.store("retry", endpoint_url=proxy.url, max_attempts=3)
        assert patient.get_bytes("obj") == b"payload"
        assert proxy.seen == 3  # two refusals, then the retry that got through

        proxy.seen = 0
        hasty = seaweedfs.store("retry", endpoint_url=proxy.url, max_attempts=1)
        with pytest.raises(ClientError) as e:
            hasty.get_bytes("obj")
        assert e.value.response["Error"]["Code"] == code and proxy.seen == 1
    finally:
        proxy.close()


def test_settings_env_reach_a_child_store(seaweedfs: Any, monkeypatch: pytest.MonkeyPatch):
    """What the trainer does: open the store from its URL alone, with TUNERY_S3_* from the environment."""
    settings = Settings(**seaweedfs.settings("child"))
    open_store(settings.object_store, settings).put_bytes("spec.json", b"{}")
    for k, v in store_environment(settings).items():
        monkeypatch.setenv(k, v)
    from_env = open_store(settings.object_store, Settings())
    assert from_env.get_bytes("spec.json") == b"{}"
    assert os.environ["TUNERY_S3_SECRET_ACCESS_KEY"] == seaweedfs.secret_access_key


def test_serve_refuses_a_missing_bucket(seaweedfs: Any, tmp_path: Path):
    """Production expects the bucket to exist: `tunery serve` stops at once with a clear message."""
    env = {
        **os.environ,
        **{f"TUNERY_{k.upper()}": str(v) for k, v in seaweedfs.settings().items()},
        "TUNERY_OBJECT_STORE": "s3://no-such-bucket/x",
        "TUNERY_DATA_DIR": str(tmp_path),
        "TUNERY_DEMO_MODEL": "false",
        "TUNERY_PORT": "0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stderr
    assert "error: object store s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_local_writes_are_fsynced_before_and_after_they_are_published(tmp_path: Path, monkeypatch):
    """What the local store reports as written survives a crash of the machine: the data is fsynced before the
    rename that makes the object visible, and the folder (the new name) after it."""
    store = LocalObjectStore(tmp_path / "objects")
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        steps.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.put_stream("jobs/j/a.bin", iter([b"x" * 10, b"y" * 10]))
    folder = str(tmp_path / "objects" / "jobs" / "j")
    assert len(steps) == 3, steps
    assert steps[0].startswith(f"fsync {folder}/.a.bin.") and steps[0].endswith(".part")
    assert steps[1:] == ["replace", f"fsync {folder}"]
    assert store.get_bytes("jobs/j/a.bin") == b"x" * 10 + b"y" * 10


def _leave_unfinished_write(store: ObjectStore, key: str) -> None:
    """What a writer killed mid-object leaves: a temporary file (local), an unfinished multipart upload (S3)."""
    if isinstance(store, LocalObjectStore):
        path = store.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f".{path.name}.abc123.part").write_bytes(b"half of it")
    else:
        assert isinstance(store, S3ObjectStore)
        full = store._key(key)
        upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=full)
        store.client.upload_part(
            Bucket=store.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1, Body=b"z" * MiB
        )


def test_sweep_incomplete_removes_idle_leftovers_only(store: ObjectStore):
    _leave_unfinished_write(store, "files/killed")
    store.put_bytes("files/whole", b"kept")
    [leftover] = store.incomplete("")
    assert leftover.startswith("files/") and "killed" in leftover
    assert store.sweep_incomplete("", older_than=3600) == 0  # it could still be a slow writer
    assert len(store.incomplete("")) == 1
    time.sleep(1.1)
    assert store.sweep_incomplete("", older_than=1) == 1
    assert store.incomplete("") == [] and store.list("files/") == ["files/whole"]
