"""Shared fixtures: prepared models, and a real Tunery server on loopback driven through the OpenAI SDK."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tunery.ports import free_port as free_port  # the tests' import of it

# Fixtures of the stores the test servers use: the local folder or S3 on a real SeaweedFS (objects), SQLite or
# PostgreSQL (metadata).
pytest_plugins = ["tests.stores", "tests.metadata_stores"]

# The public gRPC API of every server a test starts (in process or not) takes a free port, not the fixed default.
os.environ.setdefault("TUNERY_API_GRPC_PORT", "0")


def share_the_cores() -> None:
    """Each pytest-xdist worker's share of the cores, as the local backend shares them among its runs
    (scheduler.cores.trainer_threads): torch's threads in this worker (its in-process trainers), and through the
    environment those of every trainer, server and vLLM it starts. Two workers each taking every core oversubscribe
    them, and torch's OpenMP threads then spin against each other: the demo model's GRPO test took 215 s with two
    copies at once at 2 threads each, 67 s at 1 thread each (43 s alone at 2). An environment that sets
    ``OMP_NUM_THREADS`` or ``TUNERY_TRAINER_THREADS`` keeps its own."""
    from scheduler.cores import THREAD_ENV, trainer_threads

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = int(os.environ.get("OMP_NUM_THREADS") or trainer_threads(0, workers))
    for name in (*THREAD_ENV, "TUNERY_TRAINER_THREADS"):
        os.environ.setdefault(name, str(threads))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # vLLM's CPU build: OMP_NUM_THREADS, unbound
    import torch

    torch.set_num_threads(threads)


share_the_cores()
MODEL_CACHE = Path(os.environ.get("TUNERY_TEST_MODEL_CACHE", Path.home() / ".cache" / "tunery" / "models"))
TINY = "tiny-llama"


def cached_model(name: str, make: Callable[[Path], object]) -> Path:
    """A model folder in the test model cache, made once: the first test process to ask makes it, under a lock, and
    the others (the suite's parallel workers) wait for it rather than make it again over the folder in use."""
    from filelock import FileLock

    out = MODEL_CACHE / name
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(MODEL_CACHE / f".{name}.lock")):
        if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
            make(out)
    return out


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The SmolLM2-135M-Instruct demo model as safetensors (converted once, then cached)."""
    from trainer.models import prepare_demo_model

    return cached_model("smollm2-135m-instruct", prepare_demo_model)


@pytest.fixture(scope="session")
def tiny_model_dir(demo_model_dir: Path) -> Path:
    """A tiny random-weight Llama with the SmolLM2 tokenizer and chat template."""
    from trainer.models import make_tiny_llama

    return cached_model("tiny-llama", lambda out: make_tiny_llama(demo_model_dir, out))


@dataclass
class RunningServer:
    base_url: str
    client: OpenAI
    http: httpx.Client
    settings: Any
    stop: Callable[[], None]
    app: Any = None

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.fine_tuning.jobs.retrieve(job_id)
            if job.status in statuses:
                return job
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} still {job.status}; events: {self.events(job_id)}")

    @property
    def grpc_address(self) -> str:
        """host:port of the server's public gRPC API."""
        address: str | None = getattr(self.app.state, "grpc_address", None)
        assert address, "this server runs no gRPC API"
        return address

    def events(self, job_id: str) -> list[str]:
        return [e.message for e in reversed(self.client.fine_tuning.jobs.list_events(job_id, limit=200).data)]


def start_server(data_dir: Path, **overrides: Any) -> RunningServer:
    import uvicorn

    from api.server import build
    from tunery.settings import Settings

    # the socket is bound here and handed to uvicorn: no window in which another process could take the port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    options: dict[str, Any] = {"scheduler_poll_seconds": 0.2, "cancel_grace_seconds": 3.0, "trainer_device": "cpu"}
    settings = Settings(data_dir=data_dir, host="127.0.0.1", port=port, **{**options, **overrides})
    app, shutdown = build(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        shutdown()

    return RunningServer(
        base_url=base,
        client=OpenAI(base_url=f"{base}/v1", api_key="test-key", max_retries=0),
        http=httpx.Client(base_url=base, timeout=60),
        settings=settings,
        stop=stop,
        app=app,
    )


@pytest.fixture
def tiny_server_factory(
    tmp_path: Path, tiny_model_dir: Path, store_settings: dict[str, Any], database_settings: dict[str, Any]
) -> Iterator[Callable[..., RunningServer]]:
    """Start servers whose only base model is the tiny Llama; all are stopped at teardown. Servers of one test
    share its metadata store (a restart sees the same state)."""
    started: list[RunningServer] = []

    def make(data_dir: Path | None = None, **overrides: Any) -> RunningServer:
        opts: dict[str, Any] = {
            "base_models": {TINY: str(tiny_model_dir)},
            "demo_model": False,
            "model_cache_dir": tmp_path / "cache",
            **store_settings,
            **database_settings,
        }
        opts.update(overrides)
        srv = start_server(data_dir or tmp_path / "data", **opts)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(tiny_server_factory: Callable[..., RunningServer]) -> RunningServer:
    return tiny_server_factory()


def chat_lines(n: int, answer: str = "BEEP BOOP: {q} END OF LINE.") -> bytes:
    lines = []
    for i in range(n):
        q = f"Question number {i}?"
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": answer.format(q=q)}]
        lines.append(json.dumps({"messages": msgs}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def upload(server: RunningServer) -> Callable[..., Any]:
    """Upload bytes as a .jsonl file through the SDK."""

    def do(data: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> Any:
        return server.client.files.create(file=(name, data), purpose=purpose)  # type: ignore[arg-type]

    return do
