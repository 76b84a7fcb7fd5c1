"""The eval reports' greedy samples (trainer/greedy.py) on the tiny Llama: the same answers as ``generate`` alone, a
draft the model reproduces taken without decoding, and a wrong or unfinished draft decoded again."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from trainer.greedy import end_tokens, greedy_answers

LIMIT = 6


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path) -> tuple[Any, list[list[int]], int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    texts = ["What is 2 + 2?", "Name a colour.", "Say something longer than the others, please."]
    prompts = [
        tok(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True))[
            "input_ids"
        ]
        for t in texts
    ]
    return model, prompts, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def plain_generate(model: Any, prompt: list[int], pad: int) -> list[int]:
    """One prompt alone, no padding: ``generate``'s answer, cut after an end token."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=LIMIT, do_sample=False, pad_token_id=pad)[
            0, len(prompt) :
        ].tolist()
    ends = end_tokens(model, pad)
    cut = next((i for i, t in enumerate(out) if t in ends), None)
    return out if cut is None else out[: cut + 1]


def test_without_drafts_the_answers_are_generates(setup: tuple[Any, list[list[int]], int]) -> None:
    import torch

    model, prompts, pad = setup
    with torch.no_grad():
        got = greedy_answers(model, prompts, LIMIT, pad)
    assert got.verified == 0
    assert got.answers == [plain_generate(model, p, pad) for p in prompts]  # batched and left-padded alike
    assert all(1 <= len(a) <= LIMIT for a in got.answers)


def test_reproduced_drafts_are_taken_and_the_others_decoded(setup: tuple[Any, list[list[int]], int]) -> None:
    import torch

    model, prompts, pad = setup
    with torch.no_grad():
        first = greedy_answers(model, prompts, LIMIT, pad).answers
        again = greedy_answers(model, prompts, LIMIT, pad, drafts=first)
        assert (again.verified, again.answers) == (len(prompts), first)  # one forward pass, no decoding

        wrong = [list(a) for a in first]
        wrong[0][len(wrong[0]) // 2] = (wrong[0][len(wrong[0]) // 2] + 1) % model.config.vocab_size
        unfinished = first[2][:-1] if len(first[2]) == LIMIT and first[2][-1] not in end_tokens(model, pad) else []
        drafts = [wrong[0], first[1], unfinished]  # a wrong token; right; cut short (or empty): not a whole answer
        mixed = greedy_answers(model, prompts, LIMIT, pad, drafts=drafts)
    assert mixed.verified == 1 and mixed.answers == first

    model = copy.deepcopy(model)
    with torch.no_grad():  # another model: nothing it does not reproduce is kept
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        changed = greedy_answers(model, prompts, LIMIT, pad, drafts=first)
    fresh = [plain_generate(model, p, pad) for p in prompts]
    assert changed.answers == fresh
    assert changed.verified == sum(a == b for a, b in zip(first, fresh, strict=True))
