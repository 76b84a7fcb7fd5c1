"""`tunery serve` as a real process for the fault suite (tests/e2e/test_faults.py): started with its settings in
``TUNERY_*`` variables, killed with SIGKILL at a chosen moment and started again with the same environment on the
same data. The test process opens the same metadata and object stores to look at what a kill left behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from openai import OpenAI

from tunery.db import Database
from tunery.settings import Settings
from tunery.storage import ObjectStore, open_store

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def env_value(value: Any) -> str:
    """A setting as its ``TUNERY_*`` variable spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; that value. Fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def trainer_pids(job_id: str) -> list[int]:
    """Live `python -m trainer` processes of a job (zombies, whose parent is gone, do not count)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"trainer" in cmd and b"--spec" in cmd and any(job_id.encode() in part for part in cmd) and state != "Z":
            pids.append(int(proc.name))
    return pids


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TuneryProcess:
    """One data dir (and metadata and object store) served by successive `tunery serve` processes."""

    def __init__(self, settings: dict[str, Any], log: Path):
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.base_url = f"http://{settings['host']}:{settings['port']}"
        self.client = OpenAI(base_url=f"{self.base_url}/v1", api_key="fault-suite", max_retries=0, timeout=120)
        self.http = httpx.Client(base_url=self.base_url, timeout=120)
        # The same stores, opened by the test to look at what the server left behind.
        self.config = Settings(**settings)
        self.store: ObjectStore = open_store(self.config.resolved_object_store, self.config)
        self.db = Database(self.config.resolved_database_url)
        self.jobs: list[str] = []  # the jobs a test created (their trainers are stopped when it ends)
        self.acknowledged: dict[str, tuple[int, str]] = {}  # file id -> (bytes, sha256) of each 200 answered

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
        env.update({f"TUNERY_{k.upper()}": env_value(v) for k, v in self.settings.items()})
        env["PYTHONPATH"] = str(ROOT)
        env.setdefault("TUNERY_API_GRPC_PORT", "0")  # a free port, not the fixed default
        # One intra-op thread for the trainers it starts (and its serving engine): the tiny model gains nothing
        # from more, and spinning threads on CPUs shared with other work slow every step down.
        env["OMP_NUM_THREADS"] = "1"
        env.setdefault("TUNERY_TRAINER_THREADS", "1")
        return env

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90) -> None:
        """Start `tunery serve` and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"tunery serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"tunery serve did not answer in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed or released."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()  # the test is over: its stores are looked at no more, and a graceful stop takes seconds
        self.http.close()
        self.client.close()
        self.db.engine.dispose()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # What a client sees -------------------------------------------------------------------------------------
    def events(self, job_id: str) -> list[Any]:
        """Every event of a job, oldest first."""
        out: list[Any] = []
        after = None
        while True:
            page = self.client.fine_tuning.jobs.list_events(job_id, limit=100, **({"after": after} if after else {}))
            out += page.data
            if not page.has_more:
                return list(reversed(out))
            after = page.data[-1].id

    def file_rows(self) -> list[tuple[str, str | None]]:
        """(id, sha256) of every file row in the metadata store."""
        from sqlalchemy import select

        from tunery.db import File

        with self.db.session() as s:
            return [(i, h) for i, h in s.execute(select(File.id, File.sha256))]

    def claimed(self, kind: str, row_id: str) -> tuple[str, bool] | None:
        """(status, held by a scheduler) of a file or a job, as the metadata store says."""
        from sqlalchemy import select

        from tunery.db import File, Job

        model = File if kind == "file" else Job
        with self.db.session() as s:
            row = s.execute(select(model.status, model.claimed_by).where(model.id == row_id)).first()
        return (str(row[0]), row[1] is not None) if row else None

    def checkpoint_steps(self, job_id: str) -> list[int]:
        """The steps of the checkpoints the metadata store holds for a job."""
        from sqlalchemy import select

        from tunery.db import Checkpoint

        with self.db.session() as s:
            return sorted(s.scalars(select(Checkpoint.step_number).where(Checkpoint.job_id == job_id)))

    def upload_status(self, upload_id: str) -> str | None:
        from sqlalchemy import select

        from tunery.db import Upload

        with self.db.session() as s:
            return s.scalar(select(Upload.status).where(Upload.id == upload_id))

    def messages(self, job_id: str) -> list[str]:
        return [e.message for e in self.events(job_id)]

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 240) -> Any:
        def reached() -> Any:
            job = self.client.fine_tuning.jobs.retrieve(job_id)
            return job if job.status in statuses else None

        try:
            return wait_for(reached, timeout, f"job {job_id} to reach {sorted(statuses)}", every=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}; events: {self.messages(job_id)}\n{self.log_tail()}") from None

    def wait_event(self, job_id: str, pred: Callable[[str], bool], timeout: float = 180, every: float = 0.1) -> str:
        def seen() -> str | None:
            return next((m for m in self.messages(job_id) if pred(m)), None)

        try:
            return wait_for(seen, timeout, f"an event of job {job_id}", every=every)
        except AssertionError as e:
            raise AssertionError(f"{e}; events: {self.messages(job_id)}\n{self.log_tail()}") from None


def trainer_log(data_dir: Path, job_id: str) -> str:
    path = data_dir / "logs" / f"{job_id}.log"
    return path.read_text(errors="replace") if path.is_file() else ""


@contextlib.contextmanager
def no_trainers_left(job_ids: Callable[[], list[str]]) -> Iterator[None]:
    """On the way out, SIGKILL the trainers of these jobs a failed test may have left (processes this test
    started, found by their job id)."""
    try:
        yield
    finally:
        for job_id in job_ids():
            for pid in trainer_pids(job_id):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
