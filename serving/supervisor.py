"""One box, one command: ``tunery serve`` starts one vLLM per base model and keeps it running.

With ``TUNERY_SERVING_BACKEND=vllm`` and ``TUNERY_VLLM_LAUNCH=true``, each base model that ``TUNERY_VLLM_URLS``
does not already name gets a vLLM on a free loopback port, run by ``TUNERY_VLLM_PYTHON`` (an interpreter with vLLM
installed; its own virtual environment, as vLLM pins its own torch) as ``python -m serving.vllm_server``, so it
resolves adapters from this server's object store. Only Tunery's ``serving`` and ``tunery`` packages are put on its
``PYTHONPATH`` (through a folder of links), never this environment's site-packages.

A vLLM that exits is started again (after 1, 2, 4 ... 60 s); until it answers ``/health``, requests for its models
get a 503 "starting" with ``Retry-After``. Its output goes to ``<data dir>/logs/vllm-<model>.log``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tunery.ports import free_port
from tunery.settings import Settings
from tunery.storage import store_environment

log = logging.getLogger("tunery.serving.supervisor")

# vLLM's tool-call parser for models without one of their own: Hermes-style <tool_call> JSON.
DEFAULT_TOOL_PARSER = "hermes"


def package_links(folder: Path) -> Path:
    """A folder holding links to this checkout's ``serving`` and ``tunery`` packages and the metadata declaring
    Tunery's vLLM plugin: vLLM's PYTHONPATH."""
    import serving
    import tunery

    folder.mkdir(parents=True, exist_ok=True)
    for pkg in (serving, tunery):
        source = Path(pkg.__file__ or "").resolve().parent
        link = folder / source.name
        if link.is_symlink() and link.resolve() == source:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source, target_is_directory=True)
    from serving.vllm_plugin import write_plugin_metadata

    write_plugin_metadata(folder)  # vLLM's general plugin (the CPU multi-LoRA ops), found on this path
    return folder


@dataclass
class _VLLM:
    name: str
    model_path: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    next_start: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class VLLMSupervisor:
    def __init__(self, settings: Settings, models: dict[str, str]):
        self.settings = settings
        data = Path(settings.data_dir).resolve()
        self.python = settings.vllm_python or sys.executable
        self.pythonpath = package_links(data / "vllm-pythonpath")
        self.servers = {
            name: _VLLM(name, path, free_port(), data / "logs" / f"vllm-{name}.log") for name, path in models.items()
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="tunery-vllm-supervisor", daemon=True)

    @property
    def urls(self) -> dict[str, str]:
        return {name: v.url for name, v in self.servers.items()}

    def starting(self, name: str) -> bool:
        v = self.servers.get(name)
        return v is not None and not v.ready

    def command(self, v: _VLLM) -> list[str]:
        s = self.settings
        return [
            self.python,
            "-m",
            "serving.vllm_server",
            "--model",
            v.model_path,
            "--served-model-name",
            v.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(v.port),
            "--enable-lora",
            "--max-lora-rank",
            str(s.vllm_max_lora_rank),
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            DEFAULT_TOOL_PARSER,
            *s.vllm_args,
        ]

    def environment(self, v: _VLLM) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            **store_environment(s),
            "PYTHONPATH": str(self.pythonpath),
            "TUNERY_OBJECT_STORE": s.resolved_object_store,
            "TUNERY_VLLM_ADAPTER_DIR": str(Path(s.model_cache_dir) / "vllm-adapters" / v.name),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",
        }

    def _spawn(self, v: _VLLM) -> None:
        v.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(v.log_path, "ab") as out:
            v.process = subprocess.Popen(
                self.command(v),
                env=self.environment(v),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopping it stops its engine and workers too
            )
        v.ready = False
        log.info("started vLLM for %s on %s (pid %d, log %s)", v.name, v.url, v.process.pid, v.log_path)

    def start(self) -> VLLMSupervisor:
        for v in self.servers.values():
            self._spawn(v)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for v in self.servers.values():
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._check(v)

    def _check(self, v: _VLLM) -> None:
        proc = v.process
        if proc is not None and proc.poll() is not None:
            delay = min(60.0, 2.0**v.restarts)
            log.warning("vLLM for %s exited with %s; starting it again in %.0f s", v.name, proc.returncode, delay)
            _kill_group(proc)
            v.process, v.ready, v.next_start = None, False, time.monotonic() + delay
            v.restarts += 1
        if v.process is None:
            if time.monotonic() >= v.next_start:
                self._spawn(v)
            return
        if not v.ready:
            try:
                v.ready = httpx.get(v.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return
            if v.ready:
                log.info("vLLM for %s is ready on %s", v.name, v.url)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            for v in self.servers.values():
                if v.process is not None:
                    _kill_group(v.process)
                    v.process = None


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:  # the leader is gone; make sure its engine and workers are too
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
