"""Rows of a packed step: a step's examples, padding-free, in as few rows as its token budget allows.

A supervised step is ``batch_size`` examples (OpenAI's meaning, never changed here). Packed, they run without padding
as one row, each example with its own position ids, so that none attends to another (TRL's padding-free collator).
One row is right while the step's tokens fit in ``max_seq_length``. Past that, a single row costs attention that
grows with the square of all the step's tokens: SDPA and eager attention compute the block-diagonal mask whole, so 16
examples of 500 tokens are an 8,000-token attention, 16 times the work (and the memory) of 16 rows of 500. Flash
attention's variable-length kernels do not have that cost, so the one row stays there.

:func:`balanced_rows` splits such a step into ``ceil(tokens / max_seq_length)`` rows of about equal length (longest
example first into the shortest row), so the rows share one width with little padding. The padding at the end of a
row is a sequence of its own (its position ids restart at 0, it has no labels), so no example attends to it and it
is never a target. The loss is the same as one row's, and as unpacked (tests/trainer/test_packing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The batch key with the padding a multi-row step computes (popped before the model sees the batch).
PADDING_KEY = "tunery_padding_tokens"
# Attention implementations whose variable-length kernels make one long padding-free row cost no more than rows.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def balanced_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """The examples' indices in each row (each row in the examples' order): all in one row when their tokens fit in
    ``budget``; else in ``ceil(total / budget)`` rows (at most one per example) of about equal length."""
    total = sum(lengths)
    k = min(len(lengths), max(1, -(-total // max(1, budget))))
    if k <= 1:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = [[] for _ in range(k)]
    loads = [0] * k
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(k), key=lambda r: (loads[r], r))
        rows[r].append(i)
        loads[r] += lengths[i]
    return [sorted(row) for row in rows]


@dataclass
class RowCollator:
    """Collates a step into :func:`balanced_rows`, each row by TRL's padding-free collator (``collate``: its labels,
    position ids), the rows then padded to one width. A step that fits one row is ``collate``'s own batch."""

    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    budget: int
    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = balanced_rows([len(e["input_ids"]) for e in examples], self.budget)
        if len(rows) == 1:
            return self.collate(examples)
        parts = [self.collate([examples[i] for i in row]) for row in rows]
        width = max(int(p["input_ids"].shape[1]) for p in parts)
        input_ids = torch.full((len(parts), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(parts), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(parts), width), dtype=torch.long)
        padding = 0
        for r, part in enumerate(parts):
            n = int(part["input_ids"].shape[1])
            input_ids[r, :n] = part["input_ids"][0]
            labels[r, :n] = part["labels"][0]
            position_ids[r, :n] = part["position_ids"][0]
            position_ids[r, n:] = torch.arange(width - n)  # the padding: a sequence of its own, without labels
            padding += width - n
        # Sequence boundaries over the rows laid end to end, as the variable-length kernels read them.
        flat = position_ids.reshape(-1)
        starts = (flat == 0).nonzero().flatten()
        cu_seq_lens = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
        lengths = cu_seq_lens.diff()
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": int(lengths.max()),
            "max_length_k": int(lengths.max()),
            "seq_idx": torch.repeat_interleave(torch.arange(lengths.numel(), dtype=torch.int32), lengths).view(
                len(parts), width
            ),
            PADDING_KEY: padding,
        }


def rows_help(model: Any) -> bool:
    """Whether a step over ``max_seq_length`` tokens runs faster as rows than as one row (see above)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) not in VARLEN_ATTENTION
