r"""The Tunery trainer against plain TRL as the tutorials write it and against TRL's best built-in setting: real
tokens/s, tokens per CPU-second, peak memory, the ratios, and padding.

    .venv/bin/python bench/trainer_vs_trl.py [--steps 5] [--batch-size 4] [--max-length 512] [--long-share 0.15]
        [--best-rows batch|auto|N] [--only trl|trl-best|tunery ...] [--no-memory] [--memory-steps 2]
        [--device cpu|cuda] [--shape demo|1b|H,L,A,KV,I] [--trl-checkpointing default|on|off]
        [--tunery-checkpointing auto|on|off] [--gpu-type h100-80gb]

All train a LoRA adapter (r=16, alpha=32, dropout 0, all linear layers, lr 1e-3) on SmolLM2-135M-Instruct, in fp32
on this machine, for the same number of optimizer steps (``--steps``, TRL's ``max_steps``), on the same generated
mixed-length chat data (seeded): most conversations are short (a question and a short answer), some are long (a long
context and a longer answer).

* plain TRL: ``SFTTrainer`` on the ``messages`` dataset with ``SFTConfig(max_length=L, pad_to_multiple_of=L)``, so
  every example is padded to ``max_length`` (what tutorials do with ``padding="max_length"``), no packing;
  ``batch_size`` examples a step, the first ``steps x batch_size`` conversations;
* TRL's best: ``SFTConfig(packing=True, padding_free=True, packing_strategy="bfd", max_length=L)``: the
  conversations packed best-fit-decreasing into rows of ``max_length`` tokens, ``batch_size`` rows a step (or
  ``--best-rows``: ``auto`` is as many rows as ``batch_size`` conversations fill on average, so that TRL's best and
  Tunery compute about as many tokens a step), each step flattened into one padding-free sequence; it gets as many
  conversations as fill its steps;
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
Peak memory: each trainer alone in a fresh process for two steps (``--only NAME --steps 2``; ``--memory-steps``),
its peak RSS (``VmHWM``: the model, the optimizer state and a step's activations), unless ``--no-memory``. Prints
two header lines (the second: device, parameters, precision, rows of TRL's best, each trainer's activation
checkpointing and Tunery's memory estimate), one line per trainer, then the ratios (Tunery / each TRL), then a JSON
summary (with a ``setup`` entry naming the same).

On a GPU (issue 17: at least 1.5x TRL's best's real tokens/s on a 1B-class model, and 20% less peak GPU memory)::

    PYTHONPATH=. python3 bench/trainer_vs_trl.py --device cuda --shape 1b --steps 30 --batch-size 32 \
        --best-rows auto --max-length 1024 --memory-steps 3

* ``--device cuda``: every trainer in bf16 (TRL: ``bf16=True``, ``use_cpu=False``, the base weights loaded in bf16
  as Tunery holds them; Tunery: ``resolve_device("cuda", "bf16", "lora", its checkpointing)``); the step clock
  waits for the GPU (``torch.cuda.synchronize``) before it starts and before it is read. Each peak-memory process
  also reports ``torch.cuda.max_memory_allocated`` (MiB), printed with the ratio Tunery / each TRL.
* ``--shape 1b``: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, tied embeddings)
  with the demo tokenizer's vocabulary (49,152: 1.07B parameters), random weights (seeded, saved in bf16), made
  once into ``~/.cache/tunery/bench-models/llama-h2048-l16-a32-kv8-i8192-v49152-s0`` (about 30 s) and shared by
  every trainer and process. ``H,L,A,KV,I`` is any other shape (``256,2,4,2,512``: a quick CPU check). With a
  random shape ``--model-dir`` only needs the demo tokenizer's files (tokenizer.json, tokenizer_config.json,
  chat_template.jinja), not its weights.
* Activation checkpointing: the TRL baselines keep TRL's own default on a GPU (on: ``SFTConfig`` sets
  ``gradient_checkpointing=True``) and off on the CPU (``--trl-checkpointing``); Tunery follows its own rule
  (``--tunery-checkpointing auto``): ``tunery.estimate.gradient_checkpointing`` from the job's memory estimate
  (``estimate_for_scan`` with the token counts of Tunery's examples) on ``--gpu-type`` (h100-80gb on cuda, cpu on
  the CPU), as the scheduler decides a job's plan. Each trainer's setting is checked against its trained model's
  layers afterwards (a line says so where they differ).
* The defaults above: 30 steps (29 timed after the warm-up step); batch 32 conversations, about 3,200 tokens a step
  for Tunery (in 4 rows of up to 1,024, trainer/packing.py), and ``--best-rows auto`` gives TRL's best 3 rows of
  1,024 tokens a step, so both compute about as many tokens a step; 32 is the largest batch whose estimate (49 GiB
  of 80) leaves Tunery's checkpointing off (48 and up turn it on: the estimate counts batch x max_length positions,
  not the packed tokens).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import json
import logging
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunery.methods import Precision

DEMO_DIR = Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct"
BENCH_MODELS = Path.home() / ".cache" / "tunery" / "bench-models"  # the random-weight models, one folder a shape
# Named --shape values: hidden, layers, attention heads, KV heads, MLP (intermediate) size.
SHAPES = {"1b": (2048, 16, 32, 8, 8192)}  # Llama-3.2-1B's
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


def scratch(prefix: str) -> str:
    """A trainer's output folder, removed when the benchmark exits (each run left an empty one in /tmp)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


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


def parse_shape(value: str) -> tuple[int, int, int, int, int] | None:
    """``--shape``: None for the demo model, else (hidden, layers, heads, KV heads, intermediate)."""
    if value == "demo":
        return None
    if value in SHAPES:
        return SHAPES[value]
    try:
        hidden, layers, heads, kv, inter = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape: demo, {', '.join(SHAPES)} or H,L,A,KV,I, not {value!r}") from None
    if min(hidden, layers, heads, kv, inter) < 1 or hidden % heads or heads % kv:
        raise argparse.ArgumentTypeError(f"--shape {value}: heads must divide hidden and KV heads divide heads")
    return hidden, layers, heads, kv, inter


def random_llama(demo_dir: Path, shape: tuple[int, int, int, int, int], seed: int) -> Path:
    """A Llama of ``shape`` with random weights (seeded, saved in bf16) and the demo model's tokenizer and chat
    template, in a folder of its own under BENCH_MODELS: made once, then reused by every trainer and process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from trainer.models import publish_folder

    hidden, layers, heads, kv, inter = shape
    tokenizer = AutoTokenizer.from_pretrained(str(demo_dir))
    vocab = len(tokenizer)
    out = BENCH_MODELS / f"llama-h{hidden}-l{layers}-a{heads}-kv{kv}-i{inter}-v{vocab}-s{seed}"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    BENCH_MODELS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=BENCH_MODELS, prefix=f".{out.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    for f in demo_dir.iterdir():  # the tokenizer files and chat template, as they are
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy2(f, tmp / f.name)
    publish_folder(tmp, out)
    return out


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


def step_timer(counts: Counts, baton: Baton, name: str, cuda: bool = False) -> Any:
    """A step's clocks: on a GPU the queued kernels are waited for before the clock is read (and before it starts,
    so that none of the trainer before is counted)."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        started = cpu_started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            baton.take(name)
            if cuda:
                torch.cuda.synchronize()
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
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
    trainers that step over examples, all of them for TRL's best), the step shape, the device and each trainer's
    activation checkpointing."""

    model_dir: Path
    rows: list[dict[str, Any]]
    steps: int
    batch_size: int
    max_length: int
    seed: int
    labelled_only: bool = True  # Tunery's LM head scores the labelled positions only (trainer/kernels.py)
    in_rows: bool = True  # Tunery runs a step over max_length tokens as rows (trainer/packing.py)
    best_rows: int = 0  # rows of max_length tokens a step of TRL's best (0: batch_size)
    device: str = "cpu"  # cpu (fp32) | cuda (bf16)
    trl_checkpointing: bool | None = False  # both TRL baselines; None: TRL's default
    tunery_checkpointing: bool = False  # the plan's decision, as resolve_device gets it

    @property
    def examples(self) -> list[dict[str, Any]]:
        return self.rows[: self.steps * self.batch_size]

    @property
    def precision(self) -> Precision:
        return "bf16" if self.device == "cuda" else "fp32"


def conversations_for(
    model_dir: Path, steps: int, batch_size: int, max_length: int, long_share: float, seed: int, best_rows: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Enough conversations for every trainer: ``steps x batch_size`` of them, and as many more as TRL's best packs
    into ``steps x best_rows`` full rows of ``max_length`` tokens (with a fifth to spare for the packing's gaps), and
    ``best_rows``: as given (0: ``batch_size``), or, when -1, the rows of max_length tokens that ``batch_size``
    conversations fill on average (at least one), so that TRL's best and Tunery train about as many tokens a step."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    n = steps * batch_size
    rows = make_conversations(n, long_share, seed)
    per_row = (
        sum(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False))["input_ids"]) for r in rows) / n
    )
    if best_rows < 0:
        best_rows = max(1, round(batch_size * per_row / max_length))
    best_rows = best_rows or batch_size
    wanted = max(n, round(steps * best_rows * max_length / per_row * 1.2))
    return (make_conversations(wanted, long_share, seed) if wanted > n else rows), best_rows


def trl_args(setup: Setup, prefix: str, batch_size: int = 0, **options: Any) -> Any:
    """The SFTConfig both TRL baselines share; ``options`` are what makes each one."""
    from trl import SFTConfig

    cuda = setup.device == "cuda"
    # TRL turns activation checkpointing on by default; the Tunery trainer turns it off on CPU. Off here too by
    # default on the CPU, so that the comparison measures batching and packing only (with it on, TRL is slower
    # still); on a GPU TRL's own default (--trl-checkpointing).
    checkpointing: dict[str, Any] = (
        {} if setup.trl_checkpointing is None else {"activation_checkpointing": setup.trl_checkpointing}
    )
    return SFTConfig(
        output_dir=scratch(prefix),
        max_steps=setup.steps,
        per_device_train_batch_size=batch_size or setup.batch_size,
        learning_rate=1e-3,
        max_length=setup.max_length,
        **checkpointing,
        bf16=cuda,  # TRL's default would be bf16 autocast; all run fp32 on the CPU, bf16 on a GPU
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
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
    # The base weights as Tunery holds them: fp32 on the CPU, bf16 on a GPU (TRL would load a path in fp32).
    dtype = torch.bfloat16 if setup.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=dtype)
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
    args = trl_args(setup, "bench-trl-best-", setup.best_rows, packing=True, packing_strategy="bfd", padding_free=True)
    return trl_trainer(setup, setup.rows, args, timer, counts)


def tunery_plan(setup: Setup, gradient_checkpointing: bool | None) -> Any:
    """The training plan of a Tunery job on this data and step shape."""
    from tunery.plan import LoraPlan, TrainingPlan

    return TrainingPlan(
        n_epochs=1,
        batch_size=setup.batch_size,
        learning_rate=1e-3,
        max_seq_length=setup.max_length,
        precision=setup.precision,
        gradient_checkpointing=gradient_checkpointing,
        lora=LoraPlan(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
    )


def tunery_tokens(setup: Setup, tokenizer: Any) -> Any:
    """Tunery's examples, tokenized as a job tokenizes them (chat template, assistant mask, cut at max_length)."""
    from trainer.chat import ChatTokenizer, end_of_turn_tokens
    from tunery.data_jsonl import parse_jsonl

    data = "".join(json.dumps(r) + "\n" for r in setup.examples).encode()
    records = parse_jsonl([data]).records
    chat = ChatTokenizer(tokenizer, end_of_turn_tokens(tokenizer))
    return chat.tokenize_all(records, max_length=setup.max_length)  # type: ignore[arg-type]


def tunery_checkpointing(setup: Setup, requested: str, gpu_type: str) -> tuple[bool, Any]:
    """Whether Tunery checkpoints its activations (``--tunery-checkpointing``): as asked, or by Tunery's own rule
    (``auto``, as the scheduler's hardware check decides a job's plan): from the memory estimate of the job on
    ``gpu_type``, with the token counts of Tunery's examples. Returns the decision and the estimate."""
    from transformers import AutoTokenizer

    from tunery.estimate import estimate_for_scan, gradient_checkpointing, model_shape

    train = tunery_tokens(setup, AutoTokenizer.from_pretrained(str(setup.model_dir)))
    tokens = [len(e.input_ids) for e in train.examples]
    trained = [e.n_trained for e in train.examples]
    plan = tunery_plan(setup, None)
    est = estimate_for_scan(model_shape(setup.model_dir), tokens, trained, plan, gpu_type, setup.precision)
    asked = {"auto": None, "on": True, "off": False}[requested]
    return gradient_checkpointing(asked, est, setup.device == "cuda"), est


def build_tunery(setup: Setup, timer: Any, counts: Counts) -> Any:
    """The Tunery trainer's own configuration and data path, with its defaults."""
    from trainer.config import trl_config
    from trainer.kernels import fused_head_model
    from trainer.loading import load_base_model, lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.supervised import tokenized_datasets
    from trainer.packing import RowCollator

    plan = tunery_plan(setup, setup.tunery_checkpointing)
    device = resolve_device(setup.device, plan.precision, plan.adapter, plan.gradient_checkpointing)
    model, tokenizer = load_base_model(str(setup.model_dir), device)
    train = tunery_tokens(setup, tokenizer)
    sft = get_method("supervised")
    args = trl_config(sft, plan, seed=setup.seed, output_dir=scratch("bench-tunery-"), choice=device)
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


def peak_memory(argv: list[str], name: str, steps: int) -> dict[str, float]:
    """The peak RSS (MiB) of ``name`` trained alone for ``steps`` steps in a fresh process, and on a GPU its peak
    of allocated GPU memory (``torch.cuda.max_memory_allocated``, MiB)."""
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--only", name, "--steps", str(steps), "--no-memory", "--report-rss"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would carry the parent's over fork and exec), or ru_maxrss where
    /proc has no VmHWM (a sandboxed kernel)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checkpointing_label(value: bool | None) -> str:
    return "on" if value else "off"


def activation_checkpointing(model: Any) -> bool:
    """Whether a trained model recomputed its activations: its layers' own flag, which the Trainer sets in train()."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def params_label(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps for each trainer")
    parser.add_argument("--batch-size", type=int, default=4, help="examples a step (TRL's best: rows of max_length)")
    parser.add_argument("--max-length", type=int, default=512, help="the tutorials' max_length (TRL's default: 1024)")
    parser.add_argument(
        "--best-rows",
        default="batch",
        help="rows of max_length tokens a step of TRL's best: batch (--batch-size, the default), a number, or auto "
        "(as many as --batch-size conversations fill on average, so that it and Tunery train as many tokens a step)",
    )
    parser.add_argument("--long-share", type=float, default=0.15, help="share of long conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEMO_DIR,
        help="the demo model folder (converted if missing); with a random --shape only its tokenizer files are read",
    )
    parser.add_argument(
        "--shape",
        type=parse_shape,
        default="demo",
        help="demo (SmolLM2-135M-Instruct), 1b (Llama-3.2-1B's shape: 2048 hidden, 16 layers, 32 heads, 8 KV heads, "
        "8192 MLP) or H,L,A,KV,I: a Llama with random weights (seeded) and the demo tokenizer, made once under "
        f"{BENCH_MODELS}",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: all fp32; cuda: all bf16")
    parser.add_argument(
        "--trl-checkpointing",
        choices=["default", "on", "off"],
        default="default",
        help="the TRL baselines' activation checkpointing; default: off on the CPU, TRL's default (on) on a GPU",
    )
    parser.add_argument(
        "--tunery-checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="Tunery's activation checkpointing; auto: Tunery's rule, from its memory estimate on --gpu-type",
    )
    parser.add_argument(
        "--gpu-type", help="the GPU type of Tunery's memory estimate (tunery.estimate.GPU_TYPES; cuda: h100-80gb)"
    )
    parser.add_argument("--only", nargs="+", choices=list(TRAINERS), help="run these trainers only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps of each peak-memory run")
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
    best_rows = {"batch": 0, "auto": -1}.get(args.best_rows)
    if best_rows is None:
        try:
            best_rows = int(args.best_rows)
        except ValueError:
            parser.error(f"--best-rows: batch, auto or a number, not {args.best_rows!r}")
    from tunery.estimate import GPU_TYPES, model_shape

    gpu_type = args.gpu_type or ("h100-80gb" if args.device == "cuda" else "cpu")
    if gpu_type not in GPU_TYPES:
        parser.error(f"--gpu-type: one of {', '.join(GPU_TYPES)}")

    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging, set_determinism

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    set_determinism(args.seed)  # as the trainer does; applies to all
    if args.shape is None:
        model_dir = prepare_demo_model(args.model_dir)
    else:  # only the demo tokenizer is needed: a folder with its files will do (the weights are not read)
        tokenizer_only = (args.model_dir / "tokenizer_config.json").is_file()
        demo_dir = args.model_dir if tokenizer_only else prepare_demo_model(args.model_dir)
        model_dir = random_llama(demo_dir, args.shape, args.seed)
    names = [n for n in TRAINERS if not args.only or n in args.only]
    rows, best_rows = conversations_for(
        model_dir, args.steps, args.batch_size, args.max_length, args.long_share, args.seed, best_rows
    )
    trl_checkpointing = {"on": True, "off": False}.get(args.trl_checkpointing, None if cuda else False)
    setup = Setup(
        model_dir,
        rows,
        args.steps,
        args.batch_size,
        args.max_length,
        args.seed,
        labelled_only=not args.tunery_every_position,
        in_rows=not args.tunery_one_row,
        best_rows=best_rows,
        device=args.device,
        trl_checkpointing=trl_checkpointing,
    )
    decided, est = tunery_checkpointing(setup, args.tunery_checkpointing, gpu_type)
    setup = dataclasses.replace(setup, tunery_checkpointing=decided)
    params = model_shape(model_dir).params
    if args.shape is None:
        model_name = "SmolLM2-135M-Instruct"
    else:
        h, layers, heads, kv, inter = args.shape
        model_name = f"random Llama {h}x{layers} ({heads} heads, {kv} KV, MLP {inter}, {params_label(params)})"
    gpu_name = torch.cuda.get_device_name() if cuda else None
    if trl_checkpointing is None:  # TRL's default, as SFTConfig resolves it
        from trl import SFTConfig

        trl_on = bool(next(f.default for f in dataclasses.fields(SFTConfig) if f.name == "gradient_checkpointing"))
        trl_label = f"{checkpointing_label(trl_on)} (TRL's default)"
    else:
        trl_on, trl_label = trl_checkpointing, checkpointing_label(trl_checkpointing)
    chosen = {n: decided if n == "tunery" else trl_on for n in names}
    checkpointing = {n: trl_label for n in names if n != "tunery"}
    if "tunery" in names:
        checkpointing["tunery"] = f"{checkpointing_label(decided)} ({args.tunery_checkpointing})"
    total_gib = est.memory_gib["total"]
    setup_info: dict[str, Any] = {
        "device": args.device,
        "gpu": gpu_name,
        "model": model_name,
        "model_dir": str(model_dir),
        "params": params,
        "precision": setup.precision,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "best_rows": best_rows,
        "max_length": args.max_length,
        "checkpointing": checkpointing,
        "tunery_estimate": {"gpu_type": gpu_type, "total_gib": total_gib, "gpu_memory_gib": est.gpu_memory_gib},
        "torch": torch.__version__,
    }
    if not args.report_rss:
        print(
            f"# Tunery trainer vs plain TRL and TRL's best: {model_name} {setup.precision}, LoRA r=16 all-linear, "
            f"{args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, {len(setup.examples)} "
            f"conversations ({len(rows)} for TRL's best; {args.long_share:.0%} long, seed {args.seed}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
            flush=True,
        )
        print(
            f"# device {args.device}{f' ({gpu_name})' if cuda else ''}, {params_label(params)} parameters, "
            f"{setup.precision}; TRL's best: {best_rows} rows of {args.max_length} tokens a step; activation "
            f"checkpointing: {', '.join(f'{n} {c}' for n, c in checkpointing.items())}; Tunery's memory estimate "
            f"{total_gib:.1f} GiB ({gpu_type}, {est.gpu_memory_gib:.0f} GiB)",
            flush=True,
        )
    baton = Baton(names)
    counts = {n: Counts() for n in names}
    trainers = {}
    for name in names:
        set_determinism(args.seed)
        trainers[name] = TRAINERS[name](setup, step_timer(counts[name], baton, name, cuda), counts[name])
    errors: dict[str, str] = {}

    def train(name: str) -> None:
        try:
            trainers[name].train()
        except BaseException:  # reported below; the others must not wait for a turn forever
            errors[name] = traceback.format_exc()  # not the exception: its frames would hold the GPU memory
            trainers.pop(name, None)
            baton.finish(name)

    threads = [threading.Thread(target=train, args=(n,), name=n) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, trace in errors.items():
        print(trace, file=sys.stderr, flush=True)
        print(f"{name:>8}: failed: {trace.strip().splitlines()[-1]}", flush=True)
    active = {n: activation_checkpointing(t.model) for n, t in trainers.items()}
    for name, on in active.items():
        if on != chosen[name] and not args.report_rss:
            print(f"{name:>8}: activation checkpointing {checkpointing_label(on)}, not as set", flush=True)
    trainers.clear()
    gc.collect()
    if cuda:  # what the trainers left cached, given back before the peak-memory processes
        torch.cuda.empty_cache()
    if args.report_rss:
        if errors:
            return 1
        peak: dict[str, float] = {"peak_rss_mib": peak_rss_mib()}
        if cuda:
            peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(peak))
        return 0
    names = [n for n in names if n not in errors]
    results: dict[str, Any] = {}
    for name in names:
        r = summary(name, counts[name])
        r["activation_checkpointing"] = active[name]  # as the trained model ran
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
        # Tunery's decision as made here (the same estimate would make it again), and the rows of TRL's best.
        argv += ["--tunery-checkpointing", checkpointing_label(decided), "--best-rows", str(best_rows)]
        for name in names:
            try:
                peak = peak_memory(argv, name, args.memory_steps)
            except RuntimeError as e:
                errors[name] = str(e)
                print(f"{name:>8}: peak memory run failed: {e}", flush=True)
                continue
            results[name]["peak_rss_mib"] = round(peak["peak_rss_mib"])
            if cuda:
                results[name]["peak_gpu_mib"] = round(peak["peak_gpu_mib"])
                print(
                    f"{name:>8}: peak GPU memory {results[name]['peak_gpu_mib']} MiB allocated, peak RSS "
                    f"{results[name]['peak_rss_mib']} MiB (alone, {args.memory_steps} steps)",
                    flush=True,
                )
            else:
                print(
                    f"{name:>8}: peak RSS {results[name]['peak_rss_mib']} MiB (alone, {args.memory_steps} steps)",
                    flush=True,
                )
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
            if "peak_gpu_mib" in t and "peak_gpu_mib" in b:
                gpu_ratio = t["peak_gpu_mib"] / b["peak_gpu_mib"]
                results[f"ratio_{base}"]["peak_gpu_memory"] = round(gpu_ratio, 3)
                line += f"; peak GPU memory {gpu_ratio:.2f}x"
            if "peak_rss_mib" in t and "peak_rss_mib" in b:
                line += f"; peak RSS {t['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
            print(line, flush=True)
    results["setup"] = setup_info
    print(json.dumps(results))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
