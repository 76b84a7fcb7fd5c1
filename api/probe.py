"""The probe port (TUNERY_PROBE_PORT): ``/health`` answered by a small process of its own, from the event loop's
heartbeat.

Under load the API's event loop has hundreds of requests' callbacks queued, and a probe's request waits its turn
behind them: 200 clients on 2 cores kept ``GET /health`` on the API port at a p99 of 170-280 ms (bench/api_load.py),
and a saturated loop can push a probe past its timeout until Kubernetes restarts a pod that is working, only busy.
A probe must say whether the process works, not how long the queue is. A thread of the API process would still wait
for the interpreter's lock, which the loop and the read threads hold in turn under load; a process of its own shares
nothing with the API process but the heartbeat.

So the API process runs two things here, from its lifespan (api/app.py):

* :class:`LoopHeartbeat`: a task on the app's event loop that writes the time (``time.monotonic()``, one clock for
  every process of the machine) into an 8-byte shared file every ``interval`` seconds. A loop that turns, however
  busy, keeps writing; a loop that is stuck (a blocking call on it, a deadlock) stops.
* :class:`ProbeProcess`: ``python -m api.probe``, a process that imports the standard library only and answers
  ``GET /health`` on its own port from that file: 200 ``{"status": "ok", "loop_lag_seconds": x}`` while the last
  beat is due less than ``stale_after`` seconds ago, else 503 ``{"status": "unavailable", ...}``. It exits when the
  API process does.

The chart's liveness and readiness probes use this port (helm/tunery/templates/api.yaml). ``/health`` on the API port
stays, answered by the loop, for clients that check the API itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_BEAT = struct.Struct("d")  # the last beat's time.monotonic(); 0: none yet


class Beats:
    """The shared file's view: one process writes the beats, any other reads how late the next one is."""

    def __init__(self, path: Path, interval: float):
        self.path, self.interval = path, interval
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), _BEAT.size)

    @classmethod
    def create(cls, path: Path, interval: float) -> Beats:
        path.write_bytes(_BEAT.pack(0.0))
        return cls(path, interval)

    def beat(self) -> None:
        _BEAT.pack_into(self._map, 0, time.monotonic())

    def clear(self) -> None:
        _BEAT.pack_into(self._map, 0, 0.0)

    def lag(self) -> float | None:
        """Seconds past the next beat's due time (0 for a loop that keeps time); None: no beat yet or any more."""
        (last,) = _BEAT.unpack_from(self._map, 0)
        if last <= 0:
            return None
        return max(0.0, time.monotonic() - last - self.interval)

    def close(self) -> None:
        self._map.close()


class LoopHeartbeat:
    """Beats from the running event loop, every ``interval`` seconds, into a fresh shared file."""

    def __init__(self, interval: float = 0.2):
        self._dir = Path(tempfile.mkdtemp(prefix="tunery-probe-"))
        self.beats = Beats.create(self._dir / "heartbeat", interval)
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self.beats.path

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop it beats on, while it runs."""
        return self._task.get_loop() if self._task is not None else None

    async def _beat(self) -> None:
        while True:
            self.beats.beat()
            await asyncio.sleep(self.beats.interval)

    def start(self) -> None:
        self.beats.beat()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="tunery-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.beats.clear()

    def close(self) -> None:
        self.beats.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class ProbeProcess:
    """The probe server's process, started by the API process: ``start()`` returns once it listens."""

    def __init__(self, host: str, port: int, heartbeat: LoopHeartbeat, stale_after: float):
        self._args = [
            "--heartbeat", str(heartbeat.path), "--interval", str(heartbeat.beats.interval),
            "--host", host, "--port", str(port), "--stale-after", str(stale_after), "--parent", str(os.getpid()),
        ]  # fmt: skip
        self._proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, timeout: float = 30) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "api.probe", *self._args],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()  # "listening HOST:PORT", or nothing if it failed to start
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the probe port did not start (TUNERY_PROBE_PORT): {line or 'no answer'}")
        self.address = line.split(" ", 1)[1]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()


def _serve(beats: Beats, host: str, port: int, stale_after: float, parent: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tunery-probe"
        sys_version = ""
        timeout = 5  # a connection that sends nothing is dropped

        def _answer(self, body: bool) -> None:
            payload: dict[str, object]
            if self.path.split("?", 1)[0] != "/health":
                status, payload = 404, {"status": "not_found"}
            else:
                lag = beats.lag()
                if lag is None or lag > stale_after:
                    status, payload = 503, {"status": "unavailable", "loop_lag_seconds": lag}
                else:
                    status, payload = 200, {"status": "ok", "loop_lag_seconds": round(lag, 4)}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def log_message(self, format: str, *args: object) -> None:
            return  # a probe every few seconds is not worth a log line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def orphaned() -> None:  # the API process is gone (its own exit or a kill -9): so is its probe
        while os.getppid() == parent:
            time.sleep(0.5)
        server.shutdown()

    threading.Thread(target=orphaned, daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    print(f"listening {bound_host!s}:{bound_port}", flush=True)
    server.serve_forever(poll_interval=0.5)
    server.server_close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m api.probe", description="Tunery's probe port (started by the API).")
    ap.add_argument("--heartbeat", type=Path, required=True)
    ap.add_argument("--interval", type=float, required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stale-after", type=float, required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    _serve(Beats(args.heartbeat, args.interval), args.host, args.port, args.stale_after, args.parent)


if __name__ == "__main__":
    main()
