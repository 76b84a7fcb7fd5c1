"""Batched greedy answers, checked against drafts first: the eval reports' samples (trainer/evaluation.py).

A report generates the same prompts' greedy answers at every checkpoint, and a model that has settled answers them as
it did at the last report. So the last answers are drafts: one forward pass over each prompt and its draft gives the
model's greedy choice at every position of it, and a row whose draft it reproduces to the end (an end token, or the
token limit) has its answer. Only the other rows are decoded token by token (``generate``). This is speculative
decoding with the previous checkpoint as the draft model, all or nothing per row: on the CPU a forward pass over the
whole batch costs about what 3 of the 32 decoding steps cost (those read every weight for one token a row).

A verified answer is the model's greedy answer as one pass computes it; token-by-token decoding rounds differently,
so where two tokens are all but tied the two can part (more often in bf16, docs/evals.md): both are greedy answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Greedy:
    answers: list[list[int]]  # each prompt's answer: its tokens, up to and including the end token that stopped it
    verified: int  # the rows whose draft was their answer


def end_tokens(model: Any, fallback: int | None) -> set[int]:
    """The tokens that end a greedy answer: the model's generation config's (what ``generate`` stops at)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = fallback
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def greedy_answers(
    model: Any, prompts: list[list[int]], max_new_tokens: int, pad: int, drafts: list[list[int]] | None = None
) -> Greedy:
    """Each prompt's greedy answer (at most ``max_new_tokens``): its draft where the model reproduces it, else
    generated."""
    ends = end_tokens(model, pad)
    answers: list[list[int] | None] = [None] * len(prompts)
    if drafts is not None and len(drafts) == len(prompts):
        # a draft is a whole answer: it stopped at an end token or at the limit
        rows = [i for i, d in enumerate(drafts) if d and (d[-1] in ends or len(d) == max_new_tokens)]
        rows = [i for i in rows if len(drafts[i]) <= max_new_tokens]
        if rows:
            same = _reproduced(model, [prompts[i] for i in rows], [drafts[i] for i in rows], pad)
            for i, ok in zip(rows, same, strict=True):
                if ok:
                    answers[i] = list(drafts[i])
    verified = sum(a is not None for a in answers)
    rest = [i for i, a in enumerate(answers) if a is None]
    if rest:
        generated = _generate(model, [prompts[i] for i in rest], max_new_tokens, pad, ends)
        for i, answer in zip(rest, generated, strict=True):
            answers[i] = answer
    return Greedy([a or [] for a in answers], verified)


def _reproduced(model: Any, prompts: list[list[int]], drafts: list[list[int]], pad: int) -> list[bool]:
    """Whether the model's greedy choice at each position of ``prompt + draft`` is the draft's next token, for every
    token of the draft, row by row (one forward pass, right-padded, only the draft positions' logits)."""
    import torch

    from .evaluation import masked_logits

    device = next(model.parameters()).device
    width = max(len(p) + len(d) for p, d in zip(prompts, drafts, strict=True))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    drafted = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (p, d) in enumerate(zip(prompts, drafts, strict=True)):
        ids[row, : len(p) + len(d)] = torch.tensor(p + d)
        attention[row, : len(p) + len(d)] = 1
        drafted[row, len(p) : len(p) + len(d)] = True
    ids, attention, drafted = ids.to(device), attention.to(device), drafted.to(device)
    mask = drafted[:, 1:]  # position t predicts token t + 1
    chosen = masked_logits(model, ids, attention, mask).argmax(dim=-1)
    agree = chosen.eq(ids[:, 1:][mask])
    rows = torch.arange(len(prompts), device=device).unsqueeze(1).expand_as(mask)[mask]
    misses = torch.zeros(len(prompts), dtype=torch.long, device=device).index_add_(0, rows, (~agree).long())
    return [int(m) == 0 for m in misses.tolist()]


def left_padded(prompts: list[list[int]], pad: int, device: Any) -> tuple[Any, Any, int]:
    """A batch of prompts for ``generate``: ``(input_ids, attention_mask, width)``, each prompt right-aligned in rows
    ``width`` wide (its answer then starts at column ``width`` in every row), on ``device``."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        attention[row, width - len(p) :] = 1
    return ids.to(device), attention.to(device), width


def _generate(model: Any, prompts: list[list[int]], max_new_tokens: int, pad: int, ends: set[int]) -> list[list[int]]:
    """Greedy decoding of the prompts in one batch (left-padded), each answer cut after its end token."""
    ids, attention, width = left_padded(prompts, pad, next(model.parameters()).device)
    generated = model.generate(
        input_ids=ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad,
    )
    answers = []
    for row in generated[:, width:].tolist():
        end = next((i for i, t in enumerate(row) if t in ends), None)
        answers.append(row if end is None else row[: end + 1])
    return answers
