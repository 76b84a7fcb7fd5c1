"""Scheduler backends: how a trainer run is started, watched and stopped.

``LocalProcessBackend`` (embedded mode) runs ``python -m trainer --spec <ref>`` as a child process in its own
process group. Local trainers share the machine, the user and so the files of the server that starts them: one
trust domain (docs/security.md); brokered access (TUNERY_TRAINER_OBJECT_ACCESS) still keeps the store's credentials
out of their environment. The Kubernetes backend (one batch/v1 Job per run) implements the same interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.cores import THREAD_ENV
from tunery.integrations import SecretName
from tunery.jobspec import PARENT_PID_ENV, RUN_TOKEN_ENV
from tunery.jobstate import ErrorCode
from tunery.storage import STORE_CREDENTIAL_ENV


@dataclass
class RunEvent:
    """Something about a run the job's events should say (a pod waiting for GPUs, an image pull error)."""

    message: str
    level: str = "info"
    data: dict[str, Any] | None = None


@dataclass
class RunStatus:
    running: bool
    exit_code: int | None = None
    # The run ended without the trainer's say: its pod was lost, evicted or killed. The scheduler treats it as
    # a crash (see Scheduler.on_crash, the hook for crash-resume).
    crashed: bool = False
    error: str | None = None  # why the run ended, when the backend knows better than an exit code
    events: list[RunEvent] = field(default_factory=list)  # new since the last status call


class LaunchRefused(Exception):
    """A run that cannot be started as configured; the job fails with this message and code."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.server_error):
        super().__init__(message)
        self.message = message
        self.code = code


class Backend(ABC):
    # Whether runs outlive the scheduler process (a restarted scheduler adopts them instead of queueing again).
    adopts_runs: bool = False

    @abstractmethod
    def launch(
        self,
        job_id: str,
        spec_ref: str,
        log_path: Path,
        runtime: dict[str, Any] | None = None,
        run_token: str = "",
        secrets: dict[str, str] | None = None,
    ) -> str:
        """Start a run with the job's ``runtime`` (:meth:`runtime` when it was queued); returns a handle stored with
        the job. ``run_token`` is the run's secret: it reaches that trainer alone, as ``RUN_TOKEN_ENV`` in its
        environment, never through the object store every trainer reads. ``secrets`` (environment variable ->
        value: the project's secrets its integrations read, tunery/integrations.py) reach it the same way."""

    def runtime(self) -> dict[str, Any] | None:
        """What this backend launches runs with now (a Kubernetes pod's image, resources, placement), snapshotted
        into a job when it is queued so that a change of settings does not alter a queued or resumed job; None when
        there is nothing to snapshot (a local process)."""
        return None

    @abstractmethod
    def status(self, handle: str) -> RunStatus: ...

    @abstractmethod
    def cancel(self, handle: str) -> None:
        """Stop a run: SIGTERM, then SIGKILL after the grace period. Returns at once."""

    @abstractmethod
    def close(self) -> None:
        """Stop every run this backend started (server shutdown)."""

    def adopt(self, job_id: str, handle: str | None) -> str | None:
        """The handle of a run of ``job_id`` started by an earlier scheduler process, if it still exists."""
        return None

    def gpus_per_run(self, runtime: dict[str, Any] | None = None) -> int:
        """GPUs one run with ``runtime`` takes (counted against TUNERY_PROJECT_GPU_QUOTA)."""
        return 0

    def sweep(self, active: set[str]) -> int:
        """Remove what finished runs left behind, never touching the runs in ``active`` (the handles still
        recorded on jobs, whose end the scheduler has not taken in yet); returns how many runs were swept. Local
        processes leave nothing."""
        return 0


class LocalProcessBackend(Backend):
    def __init__(
        self,
        python: str,
        grace_seconds: float = 5.0,
        env: dict[str, str] | None = None,
        without_store_credentials: bool = False,
        threads: int = 0,
    ):
        """``without_store_credentials``: trainers are brokered (TUNERY_TRAINER_OBJECT_ACCESS): none of this
        process's object-store credentials (STORE_CREDENTIAL_ENV) reach their environment. ``threads``: each
        trainer's CPU threads (scheduler.cores.trainer_threads); 0 leaves them to the environment."""
        self.python = python
        self.grace = grace_seconds
        self.threads = threads
        self.env = {**(env or {}), **({name: str(threads) for name in THREAD_ENV} if threads > 0 else {})}
        self.without_store_credentials = without_store_credentials
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def launch(
        self,
        job_id: str,
        spec_ref: str,
        log_path: Path,
        runtime: dict[str, Any] | None = None,
        run_token: str = "",
        secrets: dict[str, str] | None = None,
    ) -> str:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.without_store_credentials:
            for name in STORE_CREDENTIAL_ENV:
                env.pop(name, None)
        # A project's integration secrets come from its own store alone: never the server's (a WANDB_API_KEY in the
        # server's environment must not log every project's jobs to one account).
        for secret in SecretName:
            env.pop(secret.value, None)
        env.update(secrets or {})
        env[PARENT_PID_ENV] = str(os.getpid())  # an orphan whose server died stops itself (trainer/orphan.py)
        env[RUN_TOKEN_ENV] = run_token
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", "trainer", "--spec", spec_ref],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: cancel stops its children too
            )
        # The host is in the handle: a scheduler replica taking the run over must not signal a pid of its own.
        handle = f"pid:{proc.pid}@{socket.gethostname()}"
        with self._lock:
            self._procs[handle] = proc
        return handle

    def running(self) -> int:
        """How many of the trainers this backend started are still running."""
        with self._lock:
            procs = list(self._procs.values())
        return sum(proc.poll() is None for proc in procs)

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
    pid_part, _, host = handle[4:].partition("@")
    if host and host != socket.gethostname():
        return  # a run on another machine: the process went with its replica
    pid = int(pid_part)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if b"trainer" in cmdline and b"--spec" in cmdline:
        _signal_group(pid, signal.SIGKILL)
