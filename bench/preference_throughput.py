"""Preference methods on the SmolLM2-135M-Instruct demo model: seconds per step and pairs/s, SFT for comparison.

    .venv/bin/python bench/preference_throughput.py [--methods supervised,dpo,orpo,kto] [--pairs 16] [--batch-size 4]

Runs the trainer's own code path (``trainer.run.run``) for one epoch over ``--pairs`` synthetic preference pairs
(a short question; preferred: the demo's "BEEP BOOP" answer; rejected: a shrug), LoRA r=16/alpha=32 on all linear
layers, once per method. ``supervised`` trains on the same pairs' preferred replies as chat examples. The first step
is warm-up and left out; model loading and checkpoint uploads are not counted. DPO and KTO run the policy and the
reference (the same model with the adapter disabled) forward; ORPO has no reference pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunery.jobspec import DataFile, JobSpec
from tunery.plan import LoraPlan, TrainingPlan
from tunery.storage import open_store

DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct"


def pairs(n: int) -> tuple[bytes, bytes]:
    prefs, chats = [], []
    for i in range(n):
        question = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        good = {"role": "assistant", "content": f"BEEP BOOP: {2 * i}. END OF LINE."}
        bad = {"role": "assistant", "content": "I am not sure, sorry."}
        prefs.append(
            json.dumps({"input": {"messages": question}, "preferred_output": [good], "non_preferred_output": [bad]})
        )
        chats.append(json.dumps({"messages": [*question, good]}))
    return ("\n".join(prefs) + "\n").encode(), ("\n".join(chats) + "\n").encode()


def bench(model_dir: Path, data: bytes, method: str, batch_size: int, device: str, seed: int) -> dict[str, Any]:
    from trainer.reporter import Reporter
    from trainer.run import run

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
                method=method,  # type: ignore[arg-type]
                beta=0.1 if method != "supervised" else None,
                n_epochs=1,
                batch_size=batch_size,
                learning_rate=1e-4,
                packing=method == "supervised",
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
    seconds = [r.seconds or 0.0 for r in timed]
    return {
        "method": method,
        "steps": len(result.rows),
        "seconds_per_step_median": round(statistics.median(seconds), 3),
        "pairs_per_second": round(batch_size * len(timed) / sum(seconds), 2) if sum(seconds) else 0.0,
        "run_wall_seconds": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="supervised,dpo,orpo,kto")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR, help="the demo model folder (converted if missing)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging

    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    model_dir = prepare_demo_model(args.model_dir)
    prefs, chats = pairs(args.pairs)
    print(
        f"# preference methods: SmolLM2-135M-Instruct, LoRA r=16 all-linear, {args.pairs} pairs, batch size "
        f"{args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or 'cpu'}",
        flush=True,
    )
    results = []
    for method in args.methods.split(","):
        data = chats if method == "supervised" else prefs
        r = bench(model_dir, data, method, args.batch_size, args.device, args.seed)
        results.append(r)
        print(
            f"{method}: {r['seconds_per_step_median']} s/step (median), {r['pairs_per_second']} pairs/s; "
            f"run wall {r['run_wall_seconds']} s",
            flush=True,
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
