"""What the eval reports add to a job: their time as a share of the training time, on the demo job.

    .venv/bin/python bench/eval_overhead.py [--validation 8] [--compare] [--samples 3] [--max-new-tokens 32] [--log]

Runs the demo job through the trainer's own code path (``trainer.run.run``): SmolLM2-135M-Instruct, LoRA, the
bundled demo examples, 3 epochs at batch size 1 (``tunery.demo``'s hyperparameters), 3 checkpoints, with the default
eval options (docs/evals.md): the baseline once, then a report at every checkpoint (the final model's is its last
checkpoint's). ``--validation N`` holds the last N demo examples out as a validation file (the reports then score
them too). Prints the seconds the reports took (the trainer's own count: baseline + each report), the run's other
seconds, and the share; ``--compare`` also runs the job with reports off and prints both wall times. Target: under
15% with the default settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from tunery.evalreport import EvalOptions
from tunery.jobspec import DataFile, JobSpec
from tunery.plan import LoraPlan, TrainingPlan
from tunery.storage import open_store

DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct"


def run_job(model_dir: Path, train: bytes, valid: bytes | None, options: EvalOptions | None) -> dict[str, Any]:
    from trainer.reporter import Reporter
    from trainer.run import run
    from tunery.demo import DEMO_HYPERPARAMETERS, SEED
    from tunery.methods import METHODS

    with tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp:
        store = open_store(tmp)
        store.put_bytes("files/train.jsonl", train)
        if valid is not None:
            store.put_bytes("files/valid.jsonl", valid)
        spec = JobSpec(
            job_id="ftjob-bench",
            organization_id="org-default",
            project_id="proj_default",
            base_model="smollm2-135m-instruct",
            base_model_path=str(model_dir),
            fine_tuned_model="ft:smollm2-135m-instruct:bench::ftjob-bench",
            training_file=DataFile(file_id="file-train", key="files/train.jsonl"),
            validation_file=DataFile(file_id="file-valid", key="files/valid.jsonl") if valid else None,
            eval=options,
            plan=TrainingPlan(
                n_epochs=DEMO_HYPERPARAMETERS["n_epochs"],
                batch_size=DEMO_HYPERPARAMETERS["batch_size"],
                learning_rate=METHODS["supervised"].base_learning_rate("lora"),
                lora=LoraPlan(r=16, alpha=32),
            ),
            seed=SEED,
            device="cpu",
            object_store=store.url,
            output_prefix="jobs/ftjob-bench",
            reporting_address="",
        )
        reporter = Reporter(None, spec.job_id, "")
        t0 = time.monotonic()
        result = run(spec, reporter)
        wall = time.monotonic() - t0
        reporter.close()
        report = json.loads(store.get_bytes("jobs/ftjob-bench/model/eval_report.json")) if options else None
    return {
        "wall_seconds": round(wall, 1),
        "eval_seconds": round(result.eval_seconds, 1),
        "steps": len(result.rows),
        "checkpoints": len(result.checkpoints),
        "validation_change": report["validation"]["relative_change"] if report and report["validation"] else None,
        "forgetting_change": report["forgetting"]["relative_change"] if report and report["forgetting"] else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--validation", type=int, default=0, help="hold out the last N demo examples (default 0)")
    parser.add_argument("--compare", action="store_true", help="also run the job with eval reports off")
    parser.add_argument("--samples", type=int, default=EvalOptions().samples)
    parser.add_argument("--max-new-tokens", type=int, default=EvalOptions().max_new_tokens)
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    parser.add_argument("--log", action="store_true", help="print each report's times (scoring, decoding)")
    args = parser.parse_args()

    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging

    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    if args.log:
        logging.getLogger("tunery.trainer.eval").setLevel(logging.INFO)
    model_dir = prepare_demo_model(args.model_dir)
    lines = (resources.files("tunery") / "demo" / "train.jsonl").read_text().splitlines(keepends=True)
    cut = len(lines) - args.validation
    train = "".join(lines[:cut]).encode()
    valid = "".join(lines[cut:]).encode() if args.validation else None
    options = EvalOptions(samples=args.samples, max_new_tokens=args.max_new_tokens)
    print(
        f"# eval overhead: demo job ({cut} training examples, {args.validation} validation), "
        f"samples={options.samples} max_new_tokens={options.max_new_tokens}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    on = run_job(model_dir, train, valid, options)
    rest = on["wall_seconds"] - on["eval_seconds"]
    share = on["eval_seconds"] / rest if rest > 0 else 0.0
    print(
        f"reports on: {on['wall_seconds']} s wall, of which eval reports {on['eval_seconds']} s "
        f"({on['checkpoints']} checkpoints + baseline): {share:.1%} of the rest of the run ({rest:.1f} s) "
        f"[target < 15%]; final model: validation {on['validation_change']}, forgetting {on['forgetting_change']}",
        flush=True,
    )
    out: dict[str, object] = {"on": on, "share": round(share, 4)}
    if args.compare:
        off = run_job(model_dir, train, valid, None)
        print(
            f"reports off: {off['wall_seconds']} s wall (difference {on['wall_seconds'] - off['wall_seconds']:.1f} s)"
        )
        out["off"] = off
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
