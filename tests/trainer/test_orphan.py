"""A local trainer whose server died (kill -9) stops itself as if preempted, instead of training on unseen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scheduler.backends import LocalProcessBackend
from tests.trainer.test_run import SPEC_KEY, setup_job, trainer_env
from tests.trainer_fixtures import chat_examples, free_port, jsonl_bytes
from tunery.jobspec import PARENT_PID_ENV
from tunery.resume import latest_state

ROOT = Path(__file__).resolve().parents[2]


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_trainer_is_told_its_parent_and_stops_when_that_parent_dies(tmp_path: Path):
    flag = tmp_path / "terminated"
    # The "trainer": watches the "server" that started it, and notes the SIGTERM the watch sends.
    trainer = textwrap.dedent(f"""
        import os, signal, sys, time
        from trainer.orphan import watch_parent_from_env
        signal.signal(signal.SIGTERM, lambda *a: (open({str(flag)!r}, "w").write("SIGTERM"), sys.exit(0)))
        watch_parent_from_env()
        time.sleep(60)
    """)
    # The "server": starts it as the local backend does (its own session, its pid in the environment), then waits.
    server = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, {PARENT_PID_ENV!r}: str(os.getpid())}}
        child = subprocess.Popen([sys.executable, "-c", {trainer!r}], env=env, start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True, env=env)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        time.sleep(2.5)  # several checks while the server lives: the trainer trains on
        assert not flag.exists()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait(flag.exists, 10), "the orphaned trainer did not stop itself"
        assert flag.read_text() == "SIGTERM"
        assert _wait(lambda: not Path(f"/proc/{child}").exists() or "Z" in _state(child), 10)
    finally:
        for pid in (parent.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_local_backend_names_the_server_as_the_trainer_s_parent(tmp_path: Path):
    python = tmp_path / "python"
    out = tmp_path / "env"
    python.write_text(f'#!/bin/sh\necho "${PARENT_PID_ENV}" > {out}\n')
    python.chmod(0o755)
    backend = LocalProcessBackend(str(python))
    backend.launch("ftjob-x", "spec.json", tmp_path / "log" / "ftjob-x.log")
    assert _wait(lambda: out.exists() and out.read_text().strip() != "", 10)
    assert out.read_text().strip() == str(os.getpid())


# The "server": serves the reporting channel on a port, starts the real trainer as the local backend does (its own
# session, this pid as its parent), then waits to be killed.
SERVER = """
import os, subprocess, sys, time
from concurrent import futures
import grpc
from tests.trainer_fixtures import RecordingServicer
from tunery.v1 import reporting_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
reporting_pb2_grpc.add_TrainerReportingServicer_to_server(RecordingServicer(), server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
with open(sys.argv[3], "ab") as log:
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--spec", sys.argv[2]], stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )
print(child.pid, flush=True)
time.sleep(600)
"""


def _logged_at(line: str) -> float:
    """The time of a trainer log line (``2026-12-04 09:39:29,749 ...``, local time)."""
    stamp, millis = line[:23].split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


@pytest.mark.integration
def test_an_orphaned_trainer_saves_its_state_and_exits_at_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real trainer, its server (and the reporting channel with it) killed mid-run: it stops at the next step
    with a resume state, and exits without waiting on reports that nobody can receive any more."""
    port = free_port()
    store, spec = setup_job(
        tmp_path, tiny_model_dir, f"127.0.0.1:{port}", jsonl_bytes(chat_examples(12)), n_epochs=3, batch_size=1
    )
    log = tmp_path / "trainer.log"
    ref = f"{(tmp_path / 'objects').resolve().as_uri()}#{SPEC_KEY}"
    env = {**trainer_env(), "PYTHONPATH": str(ROOT)}
    script = f"PARENT_PID_ENV = {PARENT_PID_ENV!r}\n{SERVER}"
    server = subprocess.Popen(
        [sys.executable, "-c", script, str(port), ref, str(log)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert server.stdout is not None
    child = int(server.stdout.readline())
    try:
        assert _wait(lambda: "step 2/36" in log.read_text(), 180), log.read_text()[-3000:]
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        assert _wait(lambda: _state(child) in ("gone", "Z"), 60), log.read_text()[-3000:]
        text = log.read_text()
        assert f"the server (pid {server.pid}) is gone: stopping this run as if preempted" in text, text[-3000:]
        state = latest_state(store, spec.output_prefix)
        assert state is not None and 2 <= state.step < 36
        # Its last reports cannot get through without a server: it gives them up at once (not after 10 s).
        [stopped] = [ln for ln in text.splitlines() if "run stopped (preempted)" in ln]
        [gave_up] = [ln for ln in text.splitlines() if "queued report(s) at exit" in ln]
        assert _logged_at(gave_up) - _logged_at(stopped) < 5, text[-3000:]
    finally:
        for pid in (server.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
