"""The Tunery trainer against plain TRL as the tutorials write it and against TRL's best built-in setting: real
tokens/s, tokens per CPU-second, peak memory, the ratios, and padding.

    .venv/bin/python bench/trainer_vs_trl.py [--steps 5] [--batch-size 4] [--max-length 512] [--long-share 0.15]
        [--only trl|trl-best|tunery ...] [--no-memory]

All train a LoRA adapter (r=16, alpha=32, dropout 0, all linear layers, lr 1e-3) on SmolLM2-135M-Instruct, in fp32
on this machine, for the same number of optimizer steps (``--steps``, TRL's ``max_steps``), on the same generated
mixed-length chat data (seeded): most conversations are short (a question and a short answer), some are long (a long
context and a longer answer).

* plain TRL: ``SFTTrainer`` on the ``messages`` dataset with ``SFTConfig(max_length=L, pad_to_multiple_of=L)``, so
  every example is padded to ``max_length`` (what tutorials do with ``padding="max_length"``), no packing;
  ``batch_size`` examples a step, the first ``steps x batch_size`` conversations;
* TRL's best: ``SFTConfig(packing=True, padding_free=True, packing_strategy="bfd", max_length=L)``: the
  conversations packed best-fit-decreasing into rows of ``max_length`` tokens, ``batch_size`` rows a step, each step
  flattened into one padding-free sequence; it gets as many conversations as fill its steps;
* Tunery: the trainer's own path (``trainer.run``: chat tokenization with the assistant mask, ``sft_config``,
  ``build_trainer``), with its defaults: padding-free packing of each batch into one sequence with per-example
  position ids, the LM head scoring only the labelled positions (trainer/kernels.py); ``batch_size`` examples a
  step, as plain TRL.

What each one trains on is its default: TRL's conversational SFT puts the loss on every token, Tunery (as OpenAI's
fine-tuning) on the assistant's tokens only.

Real tokens are the non-padding tokens of the batches; computed tokens are every position the model runs (padding
included). Throughput = real tokens of steps 2..N / the wall time of those steps (forward, backward, optimizer; the
first step is warm-up). The two trainers are built side by side and take turns, one optimizer step each (each in its
own thread, only one computing at a time), so that other work on shared cores slows them alike. The same is printed
per CPU-second of this process (all threads), which other work on shared cores disturbs much less than wall time.
Peak memory: each trainer alone in a fresh process for two steps (``--only NAME --steps 2``), its peak RSS
(``VmHWM``: the model, the optimizer state and a step's activations), unless ``--no-memory``. Prints one line per
trainer, then the ratios (Tunery / each TRL), then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct"
WORDS = (  # noqa: SIM905
    "the robot river garden signal engine quiet bright market window paper orange number winter travel "
    "simple answer question careful energy planet forest music silver reason letter morning system "
    "careful light stone water yellow pocket ladder thunder castle bridge kitchen pencil rocket summer "
    "shadow island mirror velvet"
).split()


def sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


def text(rng: random.Random, n_words: int) -> str:
    out, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(6, 14))
        out.append(sentence(rng, k))
        left -= k
    return " ".join(out)


def make_conversations(n: int, long_share: float, seed: int) -> list[dict[str, Any]]:
    """Mixed-length chat: short Q&A (tens of tokens), and ``long_share`` long ones (hundreds of tokens)."""
    rng = random.Random(seed)
    long = set(rng.sample(range(n), round(n * long_share)))
    rows = []
    for i in range(n):
        if i in long:
            user = "Read this and summarise it. " + text(rng, rng.randint(120, 250))
            answer = text(rng, rng.randint(40, 100))
        else:
            user = text(rng, rng.randint(4, 14))
            answer = text(rng, rng.randint(3, 24))
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return rows


@dataclass
class Counts:
    """Per collated batch: real (non-padding) and computed tokens; per step: wall and CPU seconds."""

    real: list[int] = field(default_factory=list)
    computed: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time, all threads


def counting(collator: Any, counts: Counts) -> Any:
    from trainer.packing import PADDING_KEY

    def collate(examples: list[dict[str, Any]]) -> Any:
        batch = collator(examples)
        computed = int(batch["input_ids"].numel())
        mask = batch.get("attention_mask")
        counts.computed.append(computed)
        # Padding-free: no pad positions, but those that even Tunery's rows (trainer/packing.py).
        counts.real.append(int(mask.sum()) if mask is not None else computed - batch.get(PADDING_KEY, 0))
        return batch

    return collate


class Baton:
    """Makes the trainers take turns, one optimizer step each, so that other work on shared cores slows both
    alike (each trainer runs in its own thread; only the holder of the baton computes)."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.turn: str | None = self.names[0] if self.names else None
        self.done: set[str] = set()
        self.cv = threading.Condition()

    def take(self, name: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == name)

    def _next(self, name: str) -> None:
        left = [n for n in self.names if n not in self.done]
        if not left:
            self.turn = None
        elif name in left:
            self.turn = left[(left.index(name) + 1) % len(left)]
        else:
            self.turn = left[0]
        self.cv.notify_all()

    def give(self, name: str) -> None:
        with self.cv:
            self._next(name)

    def finish(self, name: str) -> None:
        with self.cv:
            self.done.add(name)
            self._next(name)


def step_timer(counts: Counts, baton: Baton, name: str) -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        started = cpu_started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            baton.take(name)
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            counts.seconds.append(time.perf_counter() - self.started)
            counts.cpu_seconds.append(time.process_time() - self.cpu_started)
            baton.give(name)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            baton.finish(name)

    return Timer()


def lora() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


@dataclass(frozen=True)
class Setup:
    """What every trainer is built from: the model, the data (the first ``steps x batch_size`` conversations for the
    trainers that step over examples, all of them for TRL's best) and the step shape."""

    model_dir: Path
    rows: list[dict[str, Any]]
    steps: int
    batch_size: int
    max_length: int
    seed: int
    labelled_only: bool = True  # Tunery's LM head scores the labelled positions only (trainer/kernels.py)
    in_rows: bool = True  # Tunery runs a step over max_length tokens as rows (trainer/packing.py)

    @property
    def examples(self) -> list[dict[str, Any]]:
        return self.rows[: self.steps * self.batch_size]


def conversations_for(
    model_dir: Path, steps: int, batch_size: int, max_length: int, long_share: float, seed: int
) -> list[dict[str, Any]]:
    """Enough conversations for every trainer: ``steps x batch_size`` of them, and as many more as TRL's best packs
    into ``steps x batch_size`` full rows of ``max_length`` tokens (with a fifth to spare for the packing's gaps)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    n = steps * batch_size
    rows = make_conversations(n, long_share, seed)
    per_row = (
        sum(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False))["input_ids"]) for r in rows) / n
    )
    wanted = max(n, round(steps * batch_size * max_length / per_row * 1.2))
    return make_conversations(wanted, long_share, seed) if wanted > n else rows


def trl_args(setup: Setup, prefix: str, **options: Any) -> Any:
    """The SFTConfig both TRL baselines share; ``options`` are what makes each one."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=tempfile.mkdtemp(prefix=prefix),
        max_steps=setup.steps,
        per_device_train_batch_size=setup.batch_size,
        learning_rate=1e-3,
        max_length=setup.max_length,
        # TRL turns activation checkpointing on by default; the Tunery trainer turns it off on CPU. Off here too,
        # so that the comparison measures batching and packing only (with it on, TRL is slower still).
        activation_checkpointing=False,
        bf16=False,  # TRL's default would be bf16 autocast; all run fp32 here
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=setup.seed,
        data_seed=setup.seed,
        **options,
    )


def trl_trainer(setup: Setup, rows: list[dict[str, Any]], args: Any, timer: Any, counts: Counts) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(setup.model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora(),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.data_collator = counting(trainer.data_collator, counts)
    return trainer


def build_trl(setup: Setup, timer: Any, counts: Counts) -> Any:
    """Plain TRL, tutorial style: conversational dataset, padding to max_length, no packing."""
    args = trl_args(
        setup,
        "bench-trl-",
        pad_to_multiple_of=setup.max_length,  # every sequence padded to max_length
        packing=False,
    )
    return trl_trainer(setup, setup.examples, args, timer, counts)


def build_trl_best(setup: Setup, timer: Any, counts: Counts) -> Any:
    """TRL's best built-in setting: best-fit-decreasing packing into max_length rows, padding-free batches."""
    args = trl_args(setup, "bench-trl-best-", packing=True, packing_strategy="bfd", padding_free=True)
    return trl_trainer(setup, setup.rows, args, timer, counts)


def build_tunery(setup: Setup, timer: Any, counts: Counts) -> Any:
    """The Tunery trainer's own configuration and data path, with its defaults."""
    from trainer.chat import ChatTokenizer, end_of_turn_tokens
    from trainer.config import trl_config
    from trainer.kernels import fused_head_model
    from trainer.loading import load_base_model, lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.supervised import tokenized_datasets
    from trainer.packing import RowCollator
    from tunery.data_jsonl import parse_jsonl
    from tunery.plan import LoraPlan, TrainingPlan

    data = "".join(json.dumps(r) + "\n" for r in setup.examples).encode()
    records = parse_jsonl([data]).records
    plan = TrainingPlan(
        n_epochs=1,
        batch_size=setup.batch_size,
        learning_rate=1e-3,
        max_seq_length=setup.max_length,
        lora=LoraPlan(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
    )
    device = resolve_device("cpu")
    model, tokenizer = load_base_model(str(setup.model_dir), device)
    chat = ChatTokenizer(tokenizer, end_of_turn_tokens(tokenizer))
    train = chat.tokenize_all(records, max_length=setup.max_length)  # type: ignore[arg-type]
    sft = get_method("supervised")
    args = trl_config(sft, plan, seed=setup.seed, output_dir=tempfile.mkdtemp(prefix="bench-tunery-"), choice=device)
    trainer = sft.build_trainer(
        model, tokenizer, args, lora_config(plan), tokenized_datasets(train), [timer], plan=plan
    )
    if not setup.in_rows and isinstance(trainer.data_collator, RowCollator):  # one row a step, to measure the rows
        trainer.data_collator = trainer.data_collator.collate
    trainer.data_collator = counting(trainer.data_collator, counts)
    if not setup.labelled_only:  # undo trainer/kernels.py, to measure it
        head = fused_head_model(trainer)
        head.forward = head.forward.__wrapped__
    return trainer


def summary(name: str, c: Counts) -> dict[str, Any]:
    timed = slice(1, None) if len(c.seconds) > 1 else slice(None)
    real, seconds, cpu = sum(c.real[timed]), sum(c.seconds[timed]), sum(c.cpu_seconds[timed])
    return {
        "trainer": name,
        "steps": len(c.seconds),
        "real_tokens": sum(c.real),
        "computed_tokens": sum(c.computed),
        "padding_share": round(1 - sum(c.real) / sum(c.computed), 4),
        "timed_real_tokens": real,
        "timed_seconds": round(seconds, 2),
        "real_tokens_per_second": round(real / seconds, 1),
        "timed_cpu_seconds": round(cpu, 2),
        "real_tokens_per_cpu_second": round(real / cpu, 1),
        "seconds_per_step": round(seconds / len(c.seconds[timed]), 2),
    }


TRAINERS = {"trl": build_trl, "trl-best": build_trl_best, "tunery": build_tunery}


def peak_memory(argv: list[str], name: str) -> float:
    """The peak RSS (MiB) of ``name`` trained alone for two steps in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--only", name, "--steps", "2", "--no-memory", "--report-rss"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mib"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps for each trainer")
    parser.add_argument("--batch-size", type=int, default=4, help="examples a step (TRL's best: rows of max_length)")
    parser.add_argument("--max-length", type=int, default=512, help="the tutorials' max_length (TRL's default: 1024)")
    parser.add_argument("--long-share", type=float, default=0.15, help="share of long conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=DEMO_DIR, help="the demo model folder (converted if missing)")
    parser.add_argument("--only", nargs="+", choices=list(TRAINERS), help="run these trainers only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument(
        "--tunery-every-position",
        action="store_true",
        help="Tunery's LM head scores every position, as TRL's does on the CPU (measures trainer/kernels.py)",
    )
    parser.add_argument(
        "--tunery-one-row",
        action="store_true",
        help="Tunery runs every step as one row, even past max_length tokens (measures trainer/packing.py)",
    )
    parser.add_argument("--report-rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging, set_determinism

    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    set_determinism(args.seed)  # as the trainer does; applies to all
    model_dir = prepare_demo_model(args.model_dir)
    names = [n for n in TRAINERS if not args.only or n in args.only]
    rows = conversations_for(model_dir, args.steps, args.batch_size, args.max_length, args.long_share, args.seed)
    setup = Setup(
        model_dir,
        rows,
        args.steps,
        args.batch_size,
        args.max_length,
        args.seed,
        labelled_only=not args.tunery_every_position,
        in_rows=not args.tunery_one_row,
    )
    if not args.report_rss:
        print(
            f"# Tunery trainer vs plain TRL and TRL's best: SmolLM2-135M-Instruct fp32, LoRA r=16 all-linear, "
            f"{args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, {len(setup.examples)} "
            f"conversations ({len(rows)} for TRL's best; {args.long_share:.0%} long, seed {args.seed}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
            flush=True,
        )
    baton = Baton(names)
    counts = {n: Counts() for n in names}
    trainers = {}
    for name in names:
        set_determinism(args.seed)
        trainers[name] = TRAINERS[name](setup, step_timer(counts[name], baton, name), counts[name])
    errors: list[BaseException] = []

    def train(name: str) -> None:
        try:
            trainers[name].train()
        except BaseException as e:  # reported below; the others must not wait for a turn forever
            errors.append(e)
            baton.finish(name)

    threads = [threading.Thread(target=train, args=(n,), name=n) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if args.report_rss:
        # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec).
        status = Path("/proc/self/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        print(json.dumps({"peak_rss_mib": peak_kib / 1024}))
        return 0
    results: dict[str, Any] = {}
    for name in names:
        r = summary(name, counts[name])
        results[name] = r
        print(
            f"{name:>8}: {r['real_tokens_per_second']:8.1f} real tokens/s  ({r['timed_real_tokens']} real tokens in "
            f"{r['timed_seconds']} s over steps 2-{r['steps']}, {r['seconds_per_step']} s/step); padding "
            f"{r['padding_share']:.1%} of {r['computed_tokens']} computed tokens; "
            f"{r['real_tokens_per_cpu_second']} real tokens per CPU-second",
            flush=True,
        )
    if not args.no_memory:
        argv = [a for a in sys.argv[1:] if a not in ("--only", *TRAINERS)]
        for name in names:
            results[name]["peak_rss_mib"] = round(peak_memory(argv, name))
            print(f"{name:>8}: peak RSS {results[name]['peak_rss_mib']} MiB (alone, 2 steps)", flush=True)
    if "tunery" in results:
        for base in ("trl", "trl-best"):
            if base not in results:
                continue
            t, b = results["tunery"], results[base]
            ratio = t["real_tokens_per_second"] / b["real_tokens_per_second"]
            cpu_ratio = t["real_tokens_per_cpu_second"] / b["real_tokens_per_cpu_second"]
            results[f"ratio_{base}"] = {
                "real_tokens_per_second": round(ratio, 2),
                "per_cpu_second": round(cpu_ratio, 2),
            }
            line = f" ratio: {ratio:.2f}x real tokens/s (Tunery / {base}); {cpu_ratio:.2f}x per CPU-second"
            if "peak_rss_mib" in t:
                line += f"; peak RSS {t['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
            print(line, flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
