"""How ``"auto"`` hyperparameters become numbers (documented in docs/hyperparameters.md); applied to a job by
:func:`tunery.plan.resolve_plan`.

- ``n_epochs``: 3, raised for small files so training sees at least 100 examples (at most 25 epochs), lowered
  for large files so it sees at most 25,000 (at least 1 epoch): OpenAI's published rule of thumb.
- ``batch_size``: about 0.2% of the training examples, between 1 and 256 (OpenAI's rule), and at most 8 on a
  CPU-only machine, where smaller batches learn more per second.
- ``learning_rate_multiplier``: 1.0. The learning rate is the method's base rate for the adapter
  (:class:`tunery.methods.MethodInfo`) x multiplier.
- ``beta`` (``dpo`` jobs): 0.1.
- ``num_generations`` (``reinforcement`` jobs, GRPO's group of completions per prompt): 8 on a GPU, 4 on a CPU-only
  machine, times ``compute_multiplier``, between 2 and 64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
TARGET_EPOCHS = 3
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
DEFAULT_MAX_SEQ_LENGTH = 1024


GENERATIONS_GPU, GENERATIONS_CPU = 8, 4
MIN_GENERATIONS, MAX_GENERATIONS = 2, 64


def auto_num_generations(compute_multiplier: float = 1.0, cpu_only: bool = True) -> int:
    base = GENERATIONS_CPU if cpu_only else GENERATIONS_GPU
    return max(MIN_GENERATIONS, min(MAX_GENERATIONS, round(base * compute_multiplier)))


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


def token_budget_batch_size(batch_tokens: int, tokens_per_example: float) -> int:
    """``tunery.training.batch_tokens``: the number of examples whose mean length fills the budget (a step is still
    that many examples), at least 1 and at most 256 (OpenAI's largest batch)."""
    return max(1, min(256, round(batch_tokens / max(tokens_per_example, 1.0))))


def tokens_within(tokens: Sequence[int], max_seq_length: int) -> int:
    """The tokens of examples as training sees them: each cut at ``max_seq_length``."""
    return sum(min(t, max_seq_length) for t in tokens)


def mean_tokens(tokens: Sequence[int], max_seq_length: int) -> float | None:
    """The mean tokens of an example as training sees them (cut at ``max_seq_length``); None without examples."""
    return tokens_within(tokens, max_seq_length) / len(tokens) if tokens else None


def total_steps(n_examples: int, batch_size: int, n_epochs: int) -> int:
    return math.ceil(n_examples / batch_size) * n_epochs


# ---- Tunery's training extensions (``tunery.training``; docs/hyperparameters.md) ---------------------------
LrScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt"]
LR_SCHEDULERS: tuple[str, ...] = get_args(LrScheduler)


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def spaced_steps(total: int, count: int) -> list[int]:
    """``count`` optimizer steps spread evenly over ``total`` steps, the last one being ``total``
    (one per epoch when ``count`` is the number of epochs)."""
    count = max(0, min(count, total))
    return sorted({math.ceil(i * total / count) for i in range(1, count + 1)}) if count else []
