"""How ``"auto"`` hyperparameters become numbers (documented in docs/hyperparameters.md).

- ``n_epochs``: 3, raised for small files so training sees at least 100 examples (at most 25 epochs), lowered
  for large files so it sees at most 25,000 (at least 1 epoch): OpenAI's published rule of thumb.
- ``batch_size``: about 0.2% of the training examples, between 1 and 256 (OpenAI's rule), and at most 8 on a
  CPU-only machine, where smaller batches learn more per second.
- ``learning_rate_multiplier``: 1.0. The learning rate is ``BASE_LR[adapter] x multiplier``, with a base of
  ``LORA_BASE_LR`` for LoRA adapters (``PREFERENCE_BASE_LR`` for the preference methods: dpo, orpo, kto).
- ``beta`` (``dpo`` jobs): 0.1.

Tunery's training extensions (``tunery.training`` on the job) are resolved by :func:`resolve_training`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
TARGET_EPOCHS = 3
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
LORA_BASE_LR = 1e-3
# Preference methods (dpo, orpo, kto) move a model that already answers well: a 10x smaller base rate.
PREFERENCE_BASE_LR = 1e-4
DEFAULT_DPO_BETA = 0.1
FULL_BASE_LR = 2e-5  # full fine-tuning moves every weight: a much smaller step than an adapter's
DEFAULT_MAX_SEQ_LENGTH = 1024


def auto_n_epochs(n_examples: int) -> int:
    n = max(1, n_examples)
    epochs = TARGET_EPOCHS
    if n * epochs < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n))
    elif n * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return epochs


def auto_batch_size(n_examples: int, cpu_only: bool = True) -> int:
    size = max(1, min(256, round(n_examples * 0.002)))
    return min(size, 8) if cpu_only else size


def resolve(
    requested: dict[str, Any] | None, n_examples: int, cpu_only: bool = True, grad_accum: int = 1
) -> dict[str, Any]:
    """Requested (numbers or "auto" or missing) -> the numbers the trainer uses. An ``auto`` batch size is a
    multiple of ``grad_accum`` (gradient accumulation splits each batch into that many micro-batches)."""
    req = requested or {}

    def pick(name: str, auto: Any) -> Any:
        v = req.get(name, "auto")
        return auto if v in (None, "auto") else v

    n_epochs = int(pick("n_epochs", auto_n_epochs(n_examples)))
    auto_batch = auto_batch_size(n_examples, cpu_only)
    if grad_accum > 1:
        auto_batch = max(grad_accum, auto_batch - auto_batch % grad_accum)
    batch_size = int(pick("batch_size", auto_batch))
    batch_size = max(1, min(batch_size, n_examples))
    multiplier = float(pick("learning_rate_multiplier", 1.0))
    return {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": multiplier}


def base_learning_rate(adapter: str = "lora", trainer: str = "supervised") -> float:
    """The learning rate at ``learning_rate_multiplier`` 1: full fine-tuning moves every weight (FULL_BASE_LR);
    adapters (LoRA, QLoRA) use LORA_BASE_LR for supervised training and PREFERENCE_BASE_LR for the preference
    trainers (dpo, orpo, kto), which move a model that already answers well."""
    if adapter == "full":
        return FULL_BASE_LR
    return LORA_BASE_LR if trainer == "supervised" else PREFERENCE_BASE_LR


def resolve_beta(requested: Any) -> float:
    return DEFAULT_DPO_BETA if requested in (None, "auto") else float(requested)


def total_steps(n_examples: int, batch_size: int, n_epochs: int) -> int:
    return math.ceil(n_examples / batch_size) * n_epochs


# ---- Tunery's training extensions (``tunery.training``; docs/hyperparameters.md) ---------------------------
LrScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt"]
LR_SCHEDULERS: tuple[str, ...] = get_args(LrScheduler)
TRAINING_DEFAULTS: dict[str, Any] = {
    "lr_scheduler_type": "linear",
    "warmup_ratio": None,
    "warmup_steps": None,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "max_seq_length": "auto",
    "gradient_accumulation_steps": 1,
    "train_on_inputs": False,
    "n_checkpoints": "auto",
    "n_evals": "auto",
    "packing": True,
    "adapter": "lora",
    "precision": "auto",
    "lora": {"r": 16, "alpha": "auto", "dropout": 0.0, "target_modules": "all-linear"},
}


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def resolve_training(
    requested: dict[str, Any] | None, hp: dict[str, Any], n_examples: int, has_validation: bool
) -> dict[str, Any]:
    """The ``tunery.training`` options with every ``auto`` (or missing) value replaced by the number the trainer
    uses, given the resolved OpenAI hyperparameters ``hp`` and the number of training examples."""
    req = {**TRAINING_DEFAULTS, **(requested or {})}
    lora = {**TRAINING_DEFAULTS["lora"], **(req.get("lora") or {})}
    steps = total_steps(n_examples, hp["batch_size"], hp["n_epochs"])
    n_ckpt = hp["n_epochs"] if req["n_checkpoints"] in (None, "auto") else int(req["n_checkpoints"])
    n_evals = hp["n_epochs"] if req["n_evals"] in (None, "auto") else int(req["n_evals"])
    n_evals = n_evals if has_validation else 0
    warmup_steps = req.get("warmup_steps")
    warmup_ratio = req.get("warmup_ratio")
    if warmup_steps is None and warmup_ratio is None:
        warmup_ratio = 0.0
    max_len = req["max_seq_length"]
    return {
        "lr_scheduler_type": req["lr_scheduler_type"],
        "warmup_ratio": None if warmup_steps is not None else float(warmup_ratio or 0.0),
        "warmup_steps": None if warmup_steps is None else int(warmup_steps),
        "weight_decay": float(req["weight_decay"]),
        "max_grad_norm": float(req["max_grad_norm"]),
        "max_seq_length": DEFAULT_MAX_SEQ_LENGTH if max_len in (None, "auto") else int(max_len),
        # Each batch splits into equal micro-batches: a batch clamped to a small file may lower it.
        "gradient_accumulation_steps": largest_divisor_at_most(
            hp["batch_size"], int(req["gradient_accumulation_steps"])
        ),
        "train_on_inputs": bool(req["train_on_inputs"]),
        "n_checkpoints": max(1, min(n_ckpt, steps)),
        "n_evals": max(0, min(n_evals, steps)),
        "packing": bool(req["packing"]),
        "adapter": req["adapter"],
        "precision": req["precision"],
        "lora": {
            "r": int(lora["r"]),
            "alpha": 2 * int(lora["r"]) if lora["alpha"] in (None, "auto") else int(lora["alpha"]),
            "dropout": float(lora["dropout"]),
            "target_modules": lora["target_modules"],
        },
    }


def spaced_steps(total: int, count: int) -> list[int]:
    """``count`` optimizer steps spread evenly over ``total`` steps, the last one being ``total``
    (one per epoch when ``count`` is the number of epochs)."""
    count = max(0, min(count, total))
    return sorted({math.ceil(i * total / count) for i in range(1, count + 1)}) if count else []
