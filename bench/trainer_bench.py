"""What the trainer benchmarks share: the generated mixed-length chat, the random-weight model shapes, the per-step
clocks and token counts, the baton that makes trainers take turns, and the peak-memory readings
(bench/trainer_vs_trl.py, bench/grpo_throughput.py)."""

from __future__ import annotations

import argparse
import atexit
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        "step_seconds": [round(s, 2) for s in c.seconds],
    }


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
