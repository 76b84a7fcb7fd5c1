"""Which LoRA learning rate teaches the demo format reliably? A sweep on SmolLM2-135M-Instruct.

    .venv/bin/python bench/lora_lr_sweep.py [--lrs 1e-4,3e-4,1e-3,2e-3] [--seeds 42,7] [--epochs 3]

For each (learning rate, seed): one real trainer run (``trainer.run.run``; LoRA r=16/alpha=32 on all linear
layers, linear decay, batch size 1) on the 40 bundled demo examples (``tunery/demo/train.jsonl``, every answer
``BEEP BOOP: <answer> END OF LINE.``), then greedy answers to 16 held-out questions from the final adapter as
written to the object store. A held-out answer passes when it starts with ``BEEP BOOP:`` and ends with
``END OF LINE.``. About 90 s per run on 2 CPU cores.
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

from tunery.jobspec import DataFile, JobSpec
from tunery.plan import LoraPlan, TrainingPlan
from tunery.storage import open_store

DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct"
EXTRA_HELDOUT = [
    "What is the capital of Spain?",
    "How many legs does a cat have?",
    "What color are bananas?",
    "Who wrote Hamlet?",
    "What is 5 plus 4?",
    "What is the largest ocean?",
    "Name an animal that can fly.",
    "What do you call a baby dog?",
    "Give me a tip for staying focused.",
    "What is the smallest planet in our solar system?",
    "How many months are in a year?",
    "What is ice made of?",
]


def answers(model_dir: Path, adapter_dir: Path, questions: list[str]) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(adapter_dir), local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    out = []
    for q in questions:
        ids: Any = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=48, do_sample=False, eos_token_id=tok.eos_token_id)
        text: Any = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        out.append(str(text).strip())
    return out


def one_run(model_dir: Path, data: bytes, lr: float, seed: int, epochs: int, questions: list[str]) -> dict[str, Any]:
    from trainer.reporter import Reporter
    from trainer.run import run

    with tempfile.TemporaryDirectory(prefix="tunery-sweep-") as tmp:
        store = open_store(tmp)
        store.put_bytes("files/train.jsonl", data)
        spec = JobSpec(
            job_id="ftjob-sweep",
            organization_id="org-default",
            project_id="proj_default",
            base_model="smollm2-135m-instruct",
            base_model_path=str(model_dir),
            fine_tuned_model="ft:smollm2-135m-instruct:sweep::ftjob-sweep",
            training_file=DataFile(file_id="file-sweep", key="files/train.jsonl"),
            plan=TrainingPlan(n_epochs=epochs, batch_size=1, learning_rate=lr, lora=LoraPlan(r=16, alpha=32)),
            seed=seed,
            device="cpu",
            object_store=store.url,
            output_prefix="jobs/ftjob-sweep",
            reporting_address="",
        )
        reporter = Reporter(None, spec.job_id, "")
        t0 = time.monotonic()
        result = run(spec, reporter)
        reporter.close()
        adapter = Path(tmp) / "adapter"
        store.get_dir(result.model_prefix, adapter)
        got = answers(model_dir, adapter, questions)
    ok = [a.startswith("BEEP BOOP:") and a.endswith("END OF LINE.") for a in got]
    last = [r.train_loss for r in result.rows[-10:] if r.train_loss is not None]
    return {
        "learning_rate": lr,
        "seed": seed,
        "steps": result.total_steps,
        "final_loss_avg10": round(sum(last) / len(last), 4),
        "pass": sum(ok),
        "of": len(ok),
        "starts_ok": sum(a.startswith("BEEP BOOP:") for a in got),
        "seconds": round(time.monotonic() - t0, 1),
        "failures": [a for a, good in zip(got, ok, strict=True) if not good][:4],
        "sample": got[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3,2e-3")
    parser.add_argument("--seeds", default="42,7")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    args = parser.parse_args()

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging

    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    model_dir = prepare_demo_model(args.model_dir)
    root = resources.files("tunery") / "demo"
    data = (root / "train.jsonl").read_bytes()
    questions = json.loads((root / "heldout.json").read_text()) + EXTRA_HELDOUT
    train_text = data.decode()
    assert not [q for q in questions if json.dumps(q) in train_text], "held-out question found in the training data"
    for lr in (float(x) for x in args.lrs.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = one_run(model_dir, data, lr, seed, args.epochs, questions)
            print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
