"""The probe port (api/probe.py): /health answered by a process of its own, from the event loop's heartbeat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.probe import LoopHeartbeat, ProbeProcess
from tests.conftest import RunningServer


@pytest.fixture
def loop_with_probe() -> Iterator[tuple[asyncio.AbstractEventLoop, str]]:
    """An event loop in a thread with a heartbeat, and a probe server on a free port; stale after 0.5 s."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    beat = LoopHeartbeat(interval=0.05)
    asyncio.run_coroutine_threadsafe(_start(beat), loop).result(5)
    probe = ProbeProcess("127.0.0.1", 0, beat, stale_after=0.5)
    probe.start()
    try:
        yield loop, f"http://{probe.address}"
    finally:
        probe.stop()
        asyncio.run_coroutine_threadsafe(beat.stop(), loop).result(5)
        beat.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _start(beat: LoopHeartbeat) -> None:
    beat.start()


def test_the_probe_answers_from_the_heartbeat_and_503_while_the_loop_is_stuck(
    loop_with_probe: tuple[asyncio.AbstractEventLoop, str],
) -> None:
    loop, url = loop_with_probe
    ok = httpx.get(f"{url}/health", timeout=5)
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    assert 0 <= ok.json()["loop_lag_seconds"] < 0.5
    assert httpx.head(f"{url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{url}/other", timeout=5).status_code == 404

    # A blocking call on the loop: the heartbeat stops, and the probe says so at once, without waiting for the loop.
    loop.call_soon_threadsafe(time.sleep, 2.0)
    time.sleep(0.8)
    started = time.monotonic()
    stuck = httpx.get(f"{url}/health", timeout=5)
    assert time.monotonic() - started < 0.5
    assert stuck.status_code == 503 and stuck.json()["status"] == "unavailable"
    assert stuck.json()["loop_lag_seconds"] > 0.5

    # The loop turns again: healthy again.
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the probe did not recover with the loop"
        time.sleep(0.1)


def test_a_heartbeat_never_started_is_unavailable_and_the_probe_ends_with_its_parent() -> None:
    beat = LoopHeartbeat()
    assert beat.beats.lag() is None
    probe = ProbeProcess("127.0.0.1", 0, beat, stale_after=10)
    probe.start()
    try:
        answer = httpx.get(f"http://{probe.address}/health", timeout=5)
        assert answer.status_code == 503 and answer.json() == {"status": "unavailable", "loop_lag_seconds": None}
    finally:
        probe.stop()
        beat.close()
    # A probe whose parent is gone (the API killed) exits by itself: its parent here is a shell that exits at once.
    script = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-m', 'api.probe', '--heartbeat', sys.argv[1], '--interval', '0.2', "
        "'--host', '127.0.0.1', '--port', '0', '--stale-after', '1', '--parent', str(__import__('os').getpid())], "
        "stdout=subprocess.PIPE, text=True); print(p.pid, p.stdout.readline().split()[1], flush=True)"
    )
    beat = LoopHeartbeat()
    try:
        out = subprocess.run([sys.executable, "-c", script, str(beat.path)], capture_output=True, text=True, check=True)
        pid, address = out.stdout.split()
        deadline = time.monotonic() + 10
        while _alive(int(pid)):
            assert time.monotonic() < deadline, "the orphaned probe did not exit"
            time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}/health", timeout=2)
    finally:
        beat.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for us (its parent, init, reaps it)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_server_runs_its_probe_port_for_its_lifetime(
    tiny_server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """``tunery serve`` with TUNERY_PROBE_PORT: the probe answers while the API's own event loop is stuck; it is
    off by default and closed when the server stops."""
    default = tiny_server_factory(data_dir=tmp_path / "default")
    assert default.app.state.probe_address is None and default.app.state.heartbeat is None  # off by default
    default.stop()
    srv = tiny_server_factory(probe_port=0, probe_stale_seconds=0.5)
    address: Any = srv.app.state.probe_address
    assert address and httpx.get(f"http://{address}/health", timeout=5).json()["status"] == "ok"

    # Stick the API's loop (as a coroutine route that blocks would): /health on the API port waits, the probe
    # port answers at once.
    loop = srv.app.state.heartbeat.loop
    assert loop is not None
    loop.call_soon_threadsafe(time.sleep, 2.0)
    time.sleep(0.9)
    started = time.monotonic()
    stuck = httpx.get(f"http://{address}/health", timeout=5)
    assert time.monotonic() - started < 0.5 and stuck.status_code == 503
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{srv.base_url}/health", timeout=0.3)  # the API port's /health is the loop's to answer

    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{address}/health", timeout=2)
