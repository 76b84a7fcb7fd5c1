"""How many CPU threads each trainer gets (scheduler.backends.trainer_threads): the local backend's trainers share
the server's cores among the runs it starts at once; a Kubernetes trainer gets one a requested core
(tests/scheduler/test_k8s_manifests.py)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from api.server import make_backend
from scheduler.backends import THREAD_ENV, LocalProcessBackend, trainer_threads
from tunery.settings import Settings


def test_the_cores_are_shared_among_the_runs_at_once_unless_configured() -> None:
    assert trainer_threads(0, 1, cores=2) == 2
    assert trainer_threads(0, 2, cores=2) == 1  # two runs at once on 2 cores: one thread each
    assert trainer_threads(0, 3, cores=8) == 2
    assert trainer_threads(0, 4, cores=2) == 1  # never none
    assert trainer_threads(3, 2, cores=2) == 3  # TUNERY_TRAINER_THREADS, as set
    assert trainer_threads(0, 1) >= 1  # this machine's own cores


def launched_env(backend: LocalProcessBackend, tmp_path: Path) -> dict[str, str]:
    """The environment of the process ``backend`` starts as a trainer (a fake interpreter that writes it down)."""
    dump = tmp_path / "env.txt"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nenv > {dump}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    backend.python = str(fake)
    handle = backend.launch("ftjob-x", "file:///spec.json", tmp_path / "log", None, "tok")
    deadline = time.monotonic() + 30
    while backend.status(handle).running and time.monotonic() < deadline:
        time.sleep(0.05)
    return dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)


def test_the_local_backends_trainers_get_their_share_of_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the server's own setting does not reach its trainers
    monkeypatch.delenv("TUNERY_TRAINER_THREADS", raising=False)  # the test suite's own share (tests/conftest.py)
    settings = Settings(data_dir=tmp_path, max_concurrent_runs=64)
    env = launched_env(make_backend(settings), tmp_path)
    assert [env[name] for name in THREAD_ENV] == ["1"] * 3
    configured = Settings(data_dir=tmp_path, trainer_threads=3)
    env = launched_env(make_backend(configured), tmp_path)
    assert [env[name] for name in THREAD_ENV] == ["3"] * 3
    # A backend made without a thread count leaves the environment's.
    assert launched_env(LocalProcessBackend("unused"), tmp_path)["OMP_NUM_THREADS"] == "7"
