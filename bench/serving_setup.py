"""The servers and fine-tuned models bench/serving_throughput.py measures: a Tunery server per engine (the embedded
engine, or a vLLM started here), the demo model, and random LoRA adapters published to the object store as
fine-tuned models.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import RunningServer, free_port, start_server
from tests.serving_fixtures import make_adapter, register_model
from tests.vllm_server import run_vllm
from tunery.settings import Settings
from tunery.storage import ObjectStore, store_environment

DEMO = "smollm2-135m-instruct"
DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / DEMO
MANIFEST = json.dumps({"base_model": DEMO}).encode()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- adapters as fine-tuned models ---------------------------------------------------------------------------------
def adapter_files(base_dir: Path, out: Path, seed: int) -> dict[str, bytes]:
    """A random LoRA adapter of the demo model (r=8, all linear layers) as the trainer stores it: the adapter, the
    tokenizer files and Tunery's manifest."""
    folder = make_adapter(base_dir, out, seed, r=8)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["tunery_manifest.json"] = MANIFEST
    return files


def publish(store: ObjectStore, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        store.put_bytes(prefix + name, data)


def register(srv: RunningServer, model_id: str, prefix: str) -> None:
    """A fine-tuned model's row, as a finished job leaves it (the files are under ``prefix`` of the store)."""
    register_model(srv, model_id, prefix, {}, base_model=DEMO)


def model_id(job: str, suffix: str) -> str:
    return f"ft:{DEMO}:personal:{suffix}:{job.removeprefix('ftjob-')}"


# ---- servers -------------------------------------------------------------------------------------------------------
@dataclass
class Options:
    model_dir: Path
    dtype: str
    max_model_len: int
    max_num_seqs: int
    max_loras: int
    max_lora_rank: int
    max_queue: int


def vllm_env(store: dict[str, Any]) -> dict[str, str]:
    """What vLLM's resolver needs to read the same store as the API."""
    settings = Settings(**store)
    return {"TUNERY_OBJECT_STORE": settings.resolved_object_store, **store_environment(settings)}


@contextlib.contextmanager
def engine_api(engine: str, workdir: Path, store: dict[str, Any], opts: Options) -> Iterator[RunningServer]:
    """A Tunery server on loopback serving the demo model with the embedded engine, or through a vLLM started here
    (stopped at the end) that reads adapters from the same store."""
    with contextlib.ExitStack() as stack:
        vllm_url = ""
        if engine == "vllm":
            extra = [
                "--dtype", opts.dtype, "--max-model-len", str(opts.max_model_len),
                "--max-num-seqs", str(opts.max_num_seqs), "--max-lora-rank", str(opts.max_lora_rank),
                "--max-loras", str(opts.max_loras), "--max-cpu-loras", str(opts.max_loras),
            ]  # fmt: skip
            started = time.monotonic()
            vllm = stack.enter_context(
                run_vllm(workdir / "vllm", opts.model_dir, DEMO, free_port(), vllm_env(store), extra)
            )
            log(f"vLLM started in {time.monotonic() - started:.0f} s ({vllm.url}, log {vllm.log_path})")
            vllm_url = vllm.url
        srv = start_server(
            workdir / "api",
            base_models={DEMO: str(opts.model_dir)},
            demo_model=False,
            model_cache_dir=workdir / "cache",
            serving_backend=engine,
            vllm_url=vllm_url,
            serving_max_queue=opts.max_queue,
            **store,
        )
        stack.callback(srv.http.close)
        stack.callback(srv.stop)
        yield srv
