"""Scheduler backends: how a trainer run is started, watched and stopped.

``LocalProcessBackend`` (embedded mode) runs ``python -m trainer --spec <ref>`` as a child process in its own
process group. The Kubernetes backend (one batch/v1 Job per run) implements the same interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunStatus:
    running: bool
    exit_code: int | None = None


class Backend(ABC):
    @abstractmethod
    def launch(self, job_id: str, spec_ref: str, log_path: Path) -> str:
        """Start a run; returns a handle stored with the job."""

    @abstractmethod
    def status(self, handle: str) -> RunStatus: ...

    @abstractmethod
    def cancel(self, handle: str) -> None:
        """Stop a run: SIGTERM, then SIGKILL after the grace period. Returns at once."""

    @abstractmethod
    def close(self) -> None:
        """Stop every run this backend started (server shutdown)."""


class LocalProcessBackend(Backend):
    def __init__(self, python: str, grace_seconds: float = 5.0, env: dict[str, str] | None = None):
        self.python = python
        self.grace = grace_seconds
        self.env = env or {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def launch(self, job_id: str, spec_ref: str, log_path: Path) -> str:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", "trainer", "--spec", spec_ref],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: cancel stops its children too
            )
        handle = f"pid:{proc.pid}"
        with self._lock:
            self._procs[handle] = proc
        return handle

    def status(self, handle: str) -> RunStatus:
        with self._lock:
            proc = self._procs.get(handle)
        if proc is None:
            # Started by an earlier server process: we can't wait on it, so it counts as gone.
            return RunStatus(running=False, exit_code=None)
        code = proc.poll()
        if code is None:
            return RunStatus(running=True)
        with self._lock:
            self._procs.pop(handle, None)
        return RunStatus(running=False, exit_code=code)

    def cancel(self, handle: str) -> None:
        with self._lock:
            proc = self._procs.get(handle)
        if proc is None:
            _kill_orphan(handle)
            return
        _signal_group(proc.pid, signal.SIGTERM)

        def reap() -> None:
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

        threading.Thread(target=reap, daemon=True, name=f"reap-{handle}").start()

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _kill_orphan(handle: str) -> None:
    """A trainer left by a previous server process: kill it if the pid is still a Tunery trainer."""
    if not handle.startswith("pid:"):
        return
    pid = int(handle[4:])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if b"trainer" in cmdline and b"--spec" in cmdline:
        _signal_group(pid, signal.SIGKILL)
