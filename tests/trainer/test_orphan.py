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

from scheduler.backends import LocalProcessBackend
from tunery.jobspec import PARENT_PID_ENV

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
