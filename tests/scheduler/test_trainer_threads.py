"""How many CPU threads each trainer gets (scheduler.cores): the local backend's trainers share the server's cores
among the runs it starts at once; a Kubernetes trainer gets one a requested core
(tests/scheduler/test_k8s_manifests.py). The embedded engine, in the server's own process, gets what the running
trainers leave, and while it answers they give it a core (the engine's side: tests/serving/test_engine.py; a real
trainer beside a real engine: tests/e2e/test_shared_cores.py)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from api.server import core_share, make_backend
from scheduler.backends import LocalProcessBackend
from scheduler.cores import THREAD_ENV, CoreShare, Split, split_cores, trainer_threads
from tests.e2e.server_process import wait_for
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


def test_the_engine_gets_what_the_trainers_leave_and_a_core_of_theirs_while_it_answers() -> None:
    idle, busy = False, True
    assert split_cores(2, 2, 0, busy) == Split(engine=2, trainer=2)  # no trainer: every core
    assert split_cores(2, 2, 1, idle) == Split(engine=1, trainer=2)  # never none
    assert split_cores(2, 2, 1, busy) == Split(engine=1, trainer=1)  # the winning pair while it answers
    assert split_cores(8, 4, 2, busy) == Split(engine=1, trainer=3)
    assert split_cores(8, 2, 3, busy) == Split(engine=2, trainer=2)  # the trainers leave it some: they keep theirs
    assert split_cores(2, 1, 2, busy) == Split(engine=1, trainer=1)  # nothing left to give


def test_the_engine_counts_as_busy_for_a_while_after_it_last_asked() -> None:
    clock = [100.0]
    running = [1]
    share = CoreShare(2, 2, lambda: running[0], busy_seconds=30, clock=lambda: clock[0])
    assert share.trainer_threads_now() == 2  # the engine never asked
    assert share.engine_threads() == 1
    assert share.trainer_threads_now() == 1
    clock[0] += 29.9
    assert share.trainer_threads_now() == 1
    clock[0] += 0.2
    assert share.trainer_threads_now() == 2  # idle again
    running[0] = 0
    assert share.engine_threads() == 2  # the trainer ended


def sleeper(tmp_path: Path) -> str:
    """An interpreter whose "trainer" just waits, until cancelled."""
    fake = tmp_path / "python-sleeps"
    fake.write_text("#!/bin/sh\nexec sleep 120\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(fake)


def test_the_embedded_servers_share_counts_the_trainers_running_now(tmp_path: Path) -> None:
    """Trainers started and ended (child processes) change the engine's threads; each trainer counts with the
    threads the backend gives it."""
    settings = Settings(data_dir=tmp_path, trainer_threads=2)
    backend = LocalProcessBackend(sleeper(tmp_path), grace_seconds=1, threads=2)
    share = core_share(settings, backend)
    assert share is not None and share.each == 2
    share.cores = 5  # as if this machine had 5
    assert (backend.running(), share.engine_threads()) == (0, 5)
    first = backend.launch("ftjob-a", "file:///a.json", tmp_path / "a.log", None, "tok")
    assert (backend.running(), share.engine_threads()) == (1, 3)
    second = backend.launch("ftjob-b", "file:///b.json", tmp_path / "b.log", None, "tok")
    assert (backend.running(), share.engine_threads(), share.trainer_threads_now()) == (2, 1, 2)
    backend.cancel(first)
    wait_for(lambda: backend.running() == 1, 30, "one trainer left")
    assert share.engine_threads() == 3
    backend.cancel(second)
    wait_for(lambda: backend.running() == 0, 30, "no trainer left")
    assert share.engine_threads() == 5
    # A backend that leaves the threads to the environment: each trainer takes every core.
    every_core = core_share(Settings(data_dir=tmp_path), LocalProcessBackend(sleeper(tmp_path)))
    assert every_core is not None and every_core.each == every_core.cores


def test_no_share_where_trainers_and_engine_do_not_share_the_cores(tmp_path: Path) -> None:
    backend = LocalProcessBackend(sleeper(tmp_path), threads=2)
    assert core_share(Settings(data_dir=tmp_path, serving_threads=3), backend) is None  # TUNERY_SERVING_THREADS
    assert core_share(Settings(data_dir=tmp_path, serving_backend="vllm"), backend) is None
    assert core_share(Settings(data_dir=tmp_path), object()) is None  # Kubernetes: no trainer on these cores
