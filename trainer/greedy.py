"""Batched greedy answers, found by drafting and checking: the eval reports' samples (trainer/evaluation.py).

Decoding token by token reads every weight of the model once per token, which on a CPU makes a report's few sample
answers cost more than scoring all its data. So answers are drafted cheaply and checked: one forward pass of the model,
in its own dtype, over a row's drafts gives the model's greedy choice at each of them, and the row keeps its drafts up
to the first the model would not have chosen, plus the model's own token there (speculative decoding with exact greedy
acceptance). The drafts are, in turn:

1. the last report's answers to the same prompts (a model that has settled answers them as it did), then
2. where the report measures in another dtype (bf16 on a CPU that runs it natively), the model's own decoding in
   that dtype, a few tokens a row at a time, with a key/value cache of its own: about 3x faster than fp32 decoding of
   the demo model (3 answers of up to 32 tokens: 1.5 s instead of 2.3-2.5 s, checks included);
3. otherwise (a GPU, ``tunery.eval.precision: full``), nothing: what the last answers leave open is decoded in the
   model's own dtype (``generate``).

A checked answer is the model's greedy answer as one pass computes it; token-by-token decoding rounds differently,
so where two tokens are all but tied the two can part (more often in bf16, docs/evals.md): both are greedy answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loading import WeightsIn


# Tokens a row drafted in another dtype before the model checks them (one forward pass over them all).
DRAFT_TOKENS = 8


@dataclass
class Greedy:
    answers: list[list[int]]  # each prompt's answer: its tokens, up to and including the end token that stopped it
    verified: int  # the rows answered without decoding in the model's own dtype (their drafts checked)
    decoded: int = 0  # the tokens decoded one by one in the model's own dtype


def end_tokens(model: Any, fallback: int | None) -> set[int]:
    """The tokens that end a greedy answer: the model's generation config's (what ``generate`` stops at)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = fallback
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def greedy_answers(
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    pad: int,
    drafts: list[list[int]] | None = None,
    draft_weights: WeightsIn | None = None,
) -> Greedy:
    """Each prompt's greedy answer (at most ``max_new_tokens``): the parts of its drafts (the last answers
    ``drafts``, then decoding with ``draft_weights``, the model's weights in another dtype) the model reproduces in
    its own weights, the rest decoded."""
    answers = _Answers(prompts, max_new_tokens, end_tokens(model, pad))
    last = drafts if drafts is not None and len(drafts) == len(prompts) else None
    if draft_weights is not None and draft_weights.dtype is not None:
        _speculate(model, answers, pad, draft_weights, last)
    elif last is not None:
        rows = [i for i in answers.open() if last[i]]
        _check(model, answers, rows, [last[i] for i in rows], pad)
    rows = answers.open()
    decoded = 0
    if rows:
        generated = _generate(model, answers.contexts(rows), answers.budget(rows), pad, answers.ends)
        for i, tokens in zip(rows, generated, strict=True):
            decoded += answers.extend(i, tokens)
    return Greedy(answers.tokens, len(prompts) - len(rows), decoded)


class _Answers:
    """The answers found so far, row by row: a row is open until its answer ends with an end token or reaches the
    limit."""

    def __init__(self, prompts: list[list[int]], limit: int, ends: set[int]):
        self.prompts, self.limit, self.ends = prompts, limit, ends
        self.tokens: list[list[int]] = [[] for _ in prompts]

    def done(self, i: int) -> bool:
        answer = self.tokens[i]
        return len(answer) >= self.limit or (bool(answer) and answer[-1] in self.ends)

    def open(self) -> list[int]:
        return [i for i in range(len(self.prompts)) if not self.done(i)]

    def contexts(self, rows: list[int]) -> list[list[int]]:
        return [self.prompts[i] + self.tokens[i] for i in rows]

    def budget(self, rows: list[int]) -> int:
        return max(self.limit - len(self.tokens[i]) for i in rows)

    def extend(self, i: int, tokens: list[int]) -> int:
        """Add ``tokens`` to row ``i``'s answer, cut after an end token and at the limit; returns how many."""
        end = next((k for k, t in enumerate(tokens) if t in self.ends), None)
        kept = (tokens if end is None else tokens[: end + 1])[: self.limit - len(self.tokens[i])]
        self.tokens[i].extend(kept)
        return len(kept)


def _check(model: Any, answers: _Answers, rows: list[int], proposals: list[list[int]], pad: int) -> None:
    """Extend each row's answer by the longest prefix of its proposal that the model's greedy choice reproduces and
    the model's own choice after it: one forward pass over every row's context and proposal, right-padded, the
    logits taken at the proposal's positions and the one after it only."""
    import torch

    from .evaluation import masked_logits

    todo = [(i, p) for i, p in zip(rows, proposals, strict=True) if p]
    if not todo:
        return
    contexts = answers.contexts([i for i, _ in todo])
    width = max(len(c) + len(p) for c, (_, p) in zip(contexts, todo, strict=True)) + 1  # room for the next token
    ids = torch.full((len(todo), width), pad, dtype=torch.long)
    attention = torch.zeros((len(todo), width), dtype=torch.long)
    picked = torch.zeros((len(todo), width - 1), dtype=torch.bool)  # position t predicts token t + 1
    for row, (context, (_, proposal)) in enumerate(zip(contexts, todo, strict=True)):
        n = len(context) + len(proposal)
        ids[row, :n] = torch.tensor(context + proposal)
        attention[row, :n] = 1
        picked[row, len(context) - 1 : n] = True
    device = next(model.parameters()).device
    chosen = masked_logits(model, ids.to(device), attention.to(device), picked.to(device)).argmax(dim=-1).tolist()
    at = 0
    for i, proposal in todo:
        mine = chosen[at : at + len(proposal) + 1]
        at += len(proposal) + 1
        same = next((k for k, (a, b) in enumerate(zip(proposal, mine[:-1], strict=True)) if a != b), len(proposal))
        answers.extend(i, [*proposal[:same], mine[same]])


def _speculate(model: Any, answers: _Answers, pad: int, draft_weights: WeightsIn, last: list[list[int]] | None) -> None:
    """Every answer by speculative greedy decoding: drafts checked by the model in its own weights in one forward
    pass, each row taking its drafts up to the first its check refused and the model's own token there. The first
    drafts are the ``last`` answers, checked in the pass that reads the prompts; then, by rounds, the model with
    ``draft_weights`` drafts DRAFT_TOKENS tokens a row, one at a time. The model and the drafter each keep their
    key/value cache (the drafter's in its dtype) over the same columns: a refused draft's column stays in both,
    masked out of the attention from then on (as a left pad is), so each row goes at its own pace in one batch."""
    import torch
    from transformers import DynamicCache

    rows = list(range(len(answers.prompts)))
    device = next(model.parameters()).device
    tokens, mask, _ = left_padded(answers.contexts(rows), pad, device)
    own, drafter = DynamicCache(), DynamicCache()
    own_seen = 0  # the columns each cache holds

    def forward(new: Any, cache: Any, seen: int) -> Any:
        """The greedy choice after each column of ``new``, which follows the ``seen`` columns in ``cache``."""
        attention = mask[:, : seen + new.shape[1]]
        positions = (attention.cumsum(-1)[:, seen:] - 1).clamp(min=0)
        out = model(input_ids=new, attention_mask=attention, position_ids=positions, past_key_values=cache)
        return out.logits.argmax(dim=-1)

    def column(new: Any) -> None:
        nonlocal tokens, mask
        tokens = torch.cat([tokens, new], dim=1)
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)

    def check(width: int, lengths: Any) -> Any:
        """Check the last ``width`` columns (each row's drafts, ``lengths`` of them real); take what each row's check
        allows; return each row's next token (the model's own, not yet in the caches)."""
        nonlocal own_seen
        start = tokens.shape[1] - width
        checked = forward(tokens[:, own_seen:], own, own_seen)[:, start - own_seen - 1 :]
        own_seen = tokens.shape[1]
        drafts = tokens[:, start:]
        agree = drafts.eq(checked[:, :-1]).long().cumprod(dim=1).sum(dim=1).minimum(lengths)  # drafts taken
        steps = torch.arange(width, device=device).unsqueeze(0)
        mask[:, start:] *= (steps < agree.unsqueeze(1)).long()  # the refused ones masked out from now on
        pending = checked.gather(1, agree.unsqueeze(1))  # the model's own token where a row's drafts part
        taken = zip(rows, drafts.tolist(), agree.tolist(), pending.squeeze(1).tolist(), strict=True)
        for i, row, a, p in taken:
            if not answers.done(i):
                answers.extend(i, [*row[:a], p])
        return pending

    # Round 0: the prompts read, and the last answers (padded to one width) checked in the same pass.
    last = last or [[] for _ in rows]
    width = min(max(map(len, last)), answers.limit)
    column(torch.tensor([(d + [pad] * width)[:width] for d in last], dtype=torch.long, device=device))
    pending = check(width, torch.tensor([min(len(d), width) for d in last], device=device))
    drafter_seen = 0
    while not all(answers.done(i) for i in rows):
        column(pending)
        with draft_weights.active():
            for _ in range(DRAFT_TOKENS):
                new = tokens[:, drafter_seen:]
                drafted = forward(new, drafter, drafter_seen)[:, -1:]
                drafter_seen += new.shape[1]
                column(drafted)
        pending = check(DRAFT_TOKENS, torch.full((len(rows),), DRAFT_TOKENS, device=device))


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
