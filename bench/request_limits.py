"""Hostile requests against a real API server: metric series, memory, spooled bytes and time to the refusal.

    .venv/bin/python bench/request_limits.py [--only series,keyless,file,part] [--json-mb 200] [--file-mb 600]

Each case starts a fresh API server (``tunery serve --role api``'s app under uvicorn, in its own process, with an
API key configured and its own TMPDIR) and sends, over a raw socket that reads the answer while it is still sending:

* ``series``: 2,000 requests with methods ``M<i>`` to /health and 2,000 keyless ``GET /v1/models/x<i>/y/z``; the
  series of ``tunery_http_requests_total`` in /metrics before and after;
* ``keyless``: a ``--json-mb`` MiB JSON body without an API key to ``POST /v1/fine_tuning/jobs``: the status, the
  time to it, the bytes the server took before it, the growth of the server's peak RSS (VmHWM);
* ``file``: a ``--file-mb`` MiB chunked ``POST /v1/files`` with the key (limit 512 MB): the same, and the most
  bytes the server held in files meanwhile (its open files under its TMPDIR and its object store, sampled every
  20 ms);
* ``part``: a ``--part-mb`` MiB part (with its Content-Length) to an unknown upload: the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import raw_http  # noqa: E402
from tests.raw_http import MiB, filler  # noqa: E402
from tunery.ports import free_port  # noqa: E402

KEY = "sk-bench-0123456789abcdef"
SERVER = """
import sys, uvicorn
from api.server import build
from tunery.settings import Settings
settings = Settings(data_dir=sys.argv[1], demo_model=False, api_keys=[sys.argv[3]])
app, shutdown = build(settings, role="api", prepare_models=False)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


class Server:
    """A fresh API server in its own process, with its own data dir and TMPDIR."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
        self.tmp = self.dir / "tmp"
        self.tmp.mkdir()
        self.port = free_port()
        env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.dir / "data"), str(self.port), KEY], env=env, cwd=ROOT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def status(self, field: str) -> int:
        """A VmHWM/VmRSS figure of the server process, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def spooled(self) -> int:
        """Bytes in the files the server holds open under its folder: its TMPDIR (spooled uploads, unlinked at once)
        and its object store (objects being written)."""
        total = 0
        fds = Path(f"/proc/{self.proc.pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd).startswith(str(self.dir)):
                    total += os.stat(fd).st_size
            except OSError:
                continue
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def series(server: Server) -> dict[str, int]:
    def count() -> int:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        return sum(1 for line in text.splitlines() if line.startswith("tunery_http_requests_total{"))

    before = count()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
        for i in range(2000):
            http.request(f"M{i}", "/health")
        for i in range(2000):
            http.get(f"/v1/models/x{i}/y/z")
    return {"series_before": before, "series_after": count(), "requests": 4000}


def measured(server: Server, method: str, path: str, headers: dict[str, str], body: Iterator[bytes], **kw: Any) -> dict:
    hwm0, peak = server.status("VmHWM"), [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.spooled())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    answer = raw_http.send(server.port, method, path, headers, body, **kw)
    stop.set()
    watcher.join()
    time.sleep(0.5)
    return {
        "status": answer.status,
        "code": answer.json()["error"]["code"] if answer.body else None,
        "seconds_to_answer": round(answer.seconds, 2),
        "MiB_sent_before_answer": round(answer.sent / MiB, 1),
        "peak_rss_growth_MiB": round((server.status("VmHWM") - hwm0) / MiB, 1),
        "peak_files_MiB": round(peak[0] / MiB, 1),
    }


def keyless(server: Server, mb: int) -> dict:
    prefix, suffix = b'{"model": "m", "training_file": "f", "suffix": [', b"0]}"
    size = len(prefix) + mb * MiB + len(suffix)
    headers = {"content-type": "application/json", "content-length": str(size)}
    return measured(server, "POST", "/v1/fine_tuning/jobs", headers, iter([prefix, *filler(mb * MiB), suffix]))


def file_upload(server: Server, mb: int) -> dict:
    ctype, before, after = raw_http.multipart("file", purpose="fine-tune")
    headers = {"authorization": f"Bearer {KEY}", "content-type": ctype}
    body = iter([before, *filler(mb * MiB, b"x" * MiB), after])
    return measured(server, "POST", "/v1/files", headers, body, chunked=True)


def part_upload(server: Server, mb: int) -> dict:
    ctype, before, after = raw_http.multipart("data")
    size = len(before) + mb * MiB + len(after)
    headers = {"authorization": f"Bearer {KEY}", "content-type": ctype, "content-length": str(size)}
    body = iter([before, *filler(mb * MiB, b"x" * MiB), after])
    return measured(server, "POST", "/v1/uploads/upload_nope/parts", headers, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="series,keyless,file,part")
    parser.add_argument("--json-mb", type=int, default=200)
    parser.add_argument("--file-mb", type=int, default=600)
    parser.add_argument("--part-mb", type=int, default=60)
    args = parser.parse_args()
    cases = {
        "series": series,
        "keyless": lambda s: keyless(s, args.json_mb),
        "file": lambda s: file_upload(s, args.file_mb),
        "part": lambda s: part_upload(s, args.part_mb),
    }
    for name in args.only.split(","):
        server = Server()
        try:
            print(name, json.dumps(cases[name](server)), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
