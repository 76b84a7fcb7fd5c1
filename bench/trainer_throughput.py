"""Trainer throughput on the SmolLM2-135M-Instruct demo model: real (non-padding) tokens per second.

    .venv/bin/python bench/trainer_throughput.py [--batch-sizes 1,4] [--examples 40] [--device auto]
        [--adapters lora,qlora,full] [--precision auto]

Runs the trainer's own code path (``trainer.run.run``: chat-template tokenization and masking, TRL SFTTrainer
with a LoRA r=16/alpha=32 adapter on all linear layers, the per-step callback, checkpoints into a scratch object
store) for one epoch over the bundled demo examples (``tunery/demo/train.jsonl``), once per batch size.
Throughput = non-padding tokens of the timed optimizer steps / their wall time (forward, backward, optimizer);
the first step is warm-up and left out. Model loading, evaluation and checkpoint uploads are not counted.
The demo model is converted to safetensors on first use (about 30 s, cached in ~/.cache/tunery/models).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from tunery.jobspec import DataFile, JobSpec
from tunery.plan import LoraPlan, TrainingPlan
from tunery.storage import open_store

DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct"


def bench(
    model_dir: Path,
    data: bytes,
    batch_size: int,
    device: str,
    seed: int,
    adapter: str = "lora",
    precision: str = "auto",
) -> dict[str, float | str]:
    from trainer.reporter import Reporter
    from trainer.run import run
    from tunery.methods import METHODS

    with tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp:
        store = open_store(tmp)
        store.put_bytes("files/train.jsonl", data)
        spec = JobSpec(
            job_id="ftjob-bench",
            organization_id="org-default",
            project_id="proj_default",
            base_model="smollm2-135m-instruct",
            base_model_path=str(model_dir),
            fine_tuned_model="ft:smollm2-135m-instruct:bench::ftjob-bench",
            training_file=DataFile(file_id="file-bench", key="files/train.jsonl"),
            plan=TrainingPlan(
                n_epochs=1,
                batch_size=batch_size,
                learning_rate=METHODS["supervised"].base_learning_rate(adapter),
                adapter=adapter,  # type: ignore[arg-type]
                precision=precision,  # type: ignore[arg-type]
                lora=LoraPlan(r=16, alpha=32),
            ),
            seed=seed,
            device=device,
            object_store=store.url,
            output_prefix="jobs/ftjob-bench",
            reporting_address="",
        )
        reporter = Reporter(None, spec.job_id, "")
        t0 = time.monotonic()
        result = run(spec, reporter)
        wall = time.monotonic() - t0
        reporter.close()
    timed = result.rows[1:] or result.rows
    tokens = sum(r.tokens or 0 for r in timed)
    seconds = sum(r.seconds or 0.0 for r in timed)
    return {
        "adapter": adapter,
        "precision": precision,
        "batch_size": batch_size,
        "steps": len(result.rows),
        "timed_steps": len(timed),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
        "seconds_per_step": round(seconds / len(timed), 3) if timed else 0.0,
        "run_wall_seconds": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--examples", type=int, default=40, help="how many demo examples (at most 40)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR, help="the demo model folder (converted if missing)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--adapters", default="lora", help="comma-separated: lora, qlora, full (default lora)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging

    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    model_dir = prepare_demo_model(args.model_dir)
    lines = (resources.files("tunery") / "demo" / "train.jsonl").read_text().splitlines(keepends=True)
    data = "".join(lines[: args.examples]).encode()

    print(
        f"# trainer throughput: SmolLM2-135M-Instruct, LoRA/QLoRA r=16 all-linear or full, "
        f"{min(args.examples, len(lines))} examples, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or 'cpu'}",
        flush=True,
    )
    results = []
    runs = [(a, int(b)) for a in args.adapters.split(",") for b in args.batch_sizes.split(",")]
    for adapter, bs in runs:
        r = bench(model_dir, data, bs, args.device, args.seed, adapter, args.precision)
        results.append(r)
        print(
            f"{adapter} ({args.precision}) batch_size={bs}: {r['tokens_per_second']} tokens/s "
            f"({r['tokens']} real tokens in {r['timed_steps']} "
            f"timed steps, {r['seconds_per_step']} s/step; run wall {r['run_wall_seconds']} s)",
            flush=True,
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
