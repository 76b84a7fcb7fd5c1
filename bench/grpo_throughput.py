"""Tunery's reinforcement trainer (GRPO) against plain TRL ``GRPOTrainer``: sampled completions/s, trained tokens/s, the
ratio.

    PYTHONPATH=. .venv/bin/python bench/grpo_throughput.py [--steps 6] [--batch-size 4] [--generations 4]
        [--completion-length 16] [--model-dir DIR] [--trl-defaults] [--generation auto|vllm|transformers]

With ``--generation vllm`` Tunery's answers are sampled by vLLM colocated with its trainer (trainer/generation.py),
plain TRL's by ``generate``; run it with the vLLM environment's interpreter (``make vllm``):
``VLLM_CPU_KVCACHE_SPACE=1 PYTHONPATH=. ~/.cache/tunery/vllm-0.32.0/bin/python bench/grpo_throughput.py
--generation vllm``.

Both train a LoRA adapter (r=16, alpha=32, dropout 0, all linear layers) of SmolLM2-135M-Instruct in fp32 on this
machine, for the same optimizer steps, on the same prompts (a keyword task: "answer with a fruit", the grader rewards
the line's fruit), with the same grader and generation settings (``--generations`` completions of at most
``--completion-length`` tokens per prompt, temperature 1, ``--batch-size`` prompts a step):

* plain TRL: ``GRPOConfig`` + ``GRPOTrainer`` as TRL's documentation writes them, the reward a Python function that
  checks the keyword, the dataset a ``prompt`` column and the keyword; in fp32 without gradient checkpointing, as
  Tunery trains on this CPU (TRL's own defaults, bf16 autocast and gradient checkpointing even on a CPU, with
  ``--trl-defaults``: a different numeric setting, measured apart);
* Tunery: the trainer's own path for a reinforcement job (``trainer/methods/grpo.py``: its TRL config from the plan,
  its rows, its reward from the job's OpenAI grader through :func:`tunery.graders.run_graders`).

Samples/s = completions sampled in steps 2..N / the wall time of those steps (generation, grading, forward, backward,
optimizer; the first step is warm-up); tokens/s counts the prompt and completion tokens of those steps (TRL's
``num_tokens``). The trainers take turns, one optimizer step each (bench/trainer_vs_trl.py's baton), so that other
work on shared cores slows both alike. Prints one line per trainer, the ratios (target: at least 1.0x), and JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.trainer_bench import DEMO_DIR, Baton, Counts, lora, step_timer  # noqa: E402

FRUITS = ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum")
GRADER = {
    "type": "string_check",
    "name": "fruit",
    "input": "{{sample.output_text}}",
    "reference": "{{item.fruit}}",
    "operation": "ilike",
}


@dataclass
class Tokens:
    """TRL's cumulative ``num_tokens`` (prompt and completion tokens) after each step."""

    after_step: list[float] = field(default_factory=list)


def prompts(n: int) -> list[dict[str, Any]]:
    return [
        {"prompt": [{"role": "user", "content": f"Name a fruit. Answer with one word: {FRUITS[i % len(FRUITS)]}."}],
         "fruit": FRUITS[i % len(FRUITS)]}
        for i in range(n)
    ]  # fmt: skip


def token_counter(tokens: Tokens) -> Any:
    from transformers import TrainerCallback

    class Count(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "num_tokens" in logs:
                tokens.after_step.append(float(logs["num_tokens"]))

    return Count()


def build_trl(model_dir: Path, rows: list[dict[str, Any]], a: argparse.Namespace, callbacks: list[Any]) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    def fruit_reward(completions: list[Any], fruit: list[str], **_: Any) -> list[float | None]:
        return [float(f in c[0]["content"].lower()) for c, f in zip(completions, fruit, strict=True)]

    plain: dict[str, Any] = {"bf16": False, "gradient_checkpointing": False}
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-grpo-trl-"),
        per_device_train_batch_size=a.batch_size * a.generations,
        num_generations=a.generations,
        max_completion_length=a.completion_length,
        temperature=1.0,
        learning_rate=1e-4,
        max_steps=a.steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=a.seed,
        disable_tqdm=True,
        **({} if a.trl_defaults else plain),
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return GRPOTrainer(
        model=model,
        reward_funcs=fruit_reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora(),
        callbacks=callbacks,
    )


def build_tunery(model_dir: Path, rows: list[dict[str, Any]], a: argparse.Namespace, callbacks: list[Any]) -> Any:
    from trainer.config import trl_config
    from trainer.generation import resolve_generation
    from trainer.loading import attach_adapter, load_base_model, resolve_device
    from trainer.methods import Datasets, get_method
    from trainer.methods.grpo import rows as grpo_rows
    from tunery.data import ChatMessage, ReinforcementRecord
    from tunery.plan import LoraPlan, ReinforcementPlan, TrainingPlan
    from tunery.storage import open_store

    records = [
        ReinforcementRecord(prompt=[ChatMessage("user", r["prompt"][0]["content"])], item={"fruit": r["fruit"]})
        for r in rows
    ]
    plan = TrainingPlan(
        method="grpo",
        n_epochs=1,
        batch_size=a.batch_size,
        learning_rate=1e-4,
        precision="fp32",
        lora=LoraPlan(r=16, alpha=32),
        reinforcement=ReinforcementPlan(
            grader=GRADER,
            num_generations=a.generations,
            max_completion_length=a.completion_length,
            kl_coef=0.0,
            temperature=1.0,
        ),
    )
    from datasets import Dataset

    method = get_method("grpo")
    choice = resolve_device("cpu", "fp32", "lora")
    choice.generation = resolve_generation(a.generation, choice.device)
    model, tokenizer = load_base_model(str(model_dir), choice)
    workdir = tempfile.mkdtemp(prefix="bench-grpo-tunery-")
    args = trl_config(method, plan, seed=a.seed, output_dir=workdir, choice=choice, model_path=str(model_dir))
    args.max_steps = a.steps
    model, peft_config = attach_adapter(model, plan, open_store(workdir), None, workdir)
    data = Datasets(train=Dataset.from_list(grpo_rows(records)), valid=None, n_examples=len(rows))
    return method.build_trainer(model, tokenizer, args, peft_config, data, callbacks, plan=plan)


def summary(name: str, c: Counts, tokens: Tokens, samples_per_step: int) -> dict[str, Any]:
    timed = slice(1, None) if len(c.seconds) > 1 else slice(None)
    seconds, cpu = sum(c.seconds[timed]), sum(c.cpu_seconds[timed])
    steps = len(c.seconds[timed])
    per_step = [b - a for a, b in zip([0.0, *tokens.after_step], tokens.after_step, strict=False)]
    timed_tokens = sum(per_step[timed])
    return {
        "trainer": name,
        "steps": len(c.seconds),
        "timed_seconds": round(seconds, 2),
        "samples_per_second": round(steps * samples_per_step / seconds, 3),
        "tokens_per_second": round(timed_tokens / seconds, 1),
        "samples_per_cpu_second": round(steps * samples_per_step / cpu, 3),
        "seconds_per_step": round(seconds / steps, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts a step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR)
    parser.add_argument(
        "--trl-defaults", action="store_true", help="plain TRL with its defaults: bf16 autocast, gradient checkpointing"
    )
    parser.add_argument(
        "--generation",
        choices=["auto", "vllm", "transformers"],
        default="auto",
        help="who samples Tunery's answers (TUNERY_TRAINER_GENERATION; vllm: run with the vLLM environment's python)",
    )
    a = parser.parse_args()

    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging, set_determinism

    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    model_dir = prepare_demo_model(a.model_dir)
    rows = prompts(a.steps * a.batch_size)
    print(
        f"# GRPO, Tunery vs plain TRL: SmolLM2-135M-Instruct fp32, LoRA r=16 all-linear, {a.steps} steps x "
        f"{a.batch_size} prompts x {a.generations} completions of <= {a.completion_length} tokens, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; plain TRL "
        f"{'with its defaults (bf16 autocast, gradient checkpointing)' if a.trl_defaults else 'in fp32, as Tunery'}; "
        f"Tunery's answers sampled by {a.generation} generation",
        flush=True,
    )
    names = ["trl", "tunery"]
    baton = Baton(names)
    counts = {n: Counts() for n in names}
    tokens = {n: Tokens() for n in names}
    builders = {"trl": build_trl, "tunery": build_tunery}
    trainers = {}
    for name in names:
        set_determinism(a.seed)
        trainers[name] = builders[name](
            model_dir, rows, a, [step_timer(counts[name], baton, name), token_counter(tokens[name])]
        )
    errors: list[BaseException] = []

    def train(name: str) -> None:
        try:
            trainers[name].train()
        except BaseException as e:  # the other trainer must not wait for a turn forever
            errors.append(e)
            baton.finish(name)

    threads = [threading.Thread(target=train, args=(n,), name=n) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    results: dict[str, Any] = {}
    for name in names:
        r = summary(name, counts[name], tokens[name], a.batch_size * a.generations)
        results[name] = r
        print(
            f"{name:>6}: {r['samples_per_second']:.3f} samples/s, {r['tokens_per_second']:.1f} tokens/s "
            f"({r['seconds_per_step']} s/step over steps 2-{r['steps']}); {r['samples_per_cpu_second']} samples "
            "per CPU-second",
            flush=True,
        )
    ratio = results["tunery"]["samples_per_second"] / results["trl"]["samples_per_second"]
    token_ratio = results["tunery"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
    results["ratio"] = round(ratio, 2)
    results["tokens_ratio"] = round(token_ratio, 2)
    print(f" ratio: {ratio:.2f}x samples/s, {token_ratio:.2f}x tokens/s (Tunery / plain TRL; target >= 1.0)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
