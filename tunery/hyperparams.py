"""How ``"auto"`` hyperparameters become numbers (documented in docs/hyperparameters.md).

- ``n_epochs``: 3, raised for small files so training sees at least 100 examples (at most 25 epochs), lowered
  for large files so it sees at most 25,000 (at least 1 epoch): OpenAI's published rule of thumb.
- ``batch_size``: about 0.2% of the training examples, between 1 and 256 (OpenAI's rule), and at most 8 on a
  CPU-only machine, where smaller batches learn more per second.
- ``learning_rate_multiplier``: 1.0. The learning rate is ``BASE_LR[adapter] x multiplier``, with a base of
  ``LORA_BASE_LR`` for LoRA adapters.
"""

from __future__ import annotations

import math
from typing import Any

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
TARGET_EPOCHS = 3
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
LORA_BASE_LR = 1e-3
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


def resolve(requested: dict[str, Any] | None, n_examples: int, cpu_only: bool = True) -> dict[str, Any]:
    """Requested (numbers or "auto" or missing) -> the numbers the trainer uses."""
    req = requested or {}

    def pick(name: str, auto: Any) -> Any:
        v = req.get(name, "auto")
        return auto if v in (None, "auto") else v

    n_epochs = int(pick("n_epochs", auto_n_epochs(n_examples)))
    batch_size = int(pick("batch_size", auto_batch_size(n_examples, cpu_only)))
    batch_size = max(1, min(batch_size, n_examples))
    multiplier = float(pick("learning_rate_multiplier", 1.0))
    return {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": multiplier}


def total_steps(n_examples: int, batch_size: int, n_epochs: int) -> int:
    return math.ceil(n_examples / batch_size) * n_epochs
