"""The eval reports' greedy samples (trainer/greedy.py) on the tiny Llama: the same answers as ``generate`` alone, a
draft the model reproduces taken without decoding, a wrong or unfinished draft kept up to where the model parts from
it and decoded on from there, and drafts decoded in bf16 checked token by token in fp32."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from trainer.greedy import end_tokens, greedy_answers
from trainer.loading import WeightsIn

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


def plain_generate(model: Any, prompt: list[int], pad: int, limit: int = LIMIT) -> list[int]:
    """One prompt alone, no padding: ``generate``'s answer, cut after an end token."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=limit, do_sample=False, pad_token_id=pad)[
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
    assert mixed.answers == first
    # The wrong draft's row is decoded on from its wrong token (the part before it and the model's own token there
    # were kept), an unfinished draft is finished by the check's next token, and an empty one is decoded whole.
    rest_of_wrong = len(first[0]) - len(first[0]) // 2 - 1
    assert mixed.decoded == rest_of_wrong + (0 if unfinished else len(first[2]))
    assert mixed.verified == 3 - (rest_of_wrong > 0) - (not unfinished)

    model = copy.deepcopy(model)
    with torch.no_grad():  # another model: nothing it does not reproduce is kept
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        changed = greedy_answers(model, prompts, LIMIT, pad, drafts=first)
    fresh = [plain_generate(model, p, pad) for p in prompts]
    assert changed.answers == fresh
    assert changed.verified >= sum(a == b for a, b in zip(first, fresh, strict=True))


@pytest.mark.parametrize("limit", [LIMIT, 40])  # one round of drafts, and several (trainer.greedy.DRAFT_TOKENS)
def test_drafts_in_another_dtype_are_checked_in_the_models_own(
    setup: tuple[Any, list[list[int]], int], limit: int
) -> None:
    """Drafts decoded in bf16 (as the eval reports do on a CPU with native bf16) give the fp32 answers: the checks
    keep what fp32 reproduces and its own token where it parts, whatever bf16 said; no token is decoded in fp32."""
    import torch

    model, prompts, pad = setup
    with torch.no_grad():
        plain = greedy_answers(model, prompts, limit, pad)
        drafted = greedy_answers(model, prompts, limit, pad, draft_weights=WeightsIn(model, torch.bfloat16))
    assert plain.answers == [plain_generate(model, p, pad, limit) for p in prompts]
    assert drafted.answers == plain.answers
    assert (drafted.verified, drafted.decoded) == (len(prompts), 0) and plain.decoded == sum(map(len, plain.answers))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights are the model's own again

    model = copy.deepcopy(model)
    with torch.no_grad():  # weights where bf16 and fp32 part more often: random changes
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        fresh = [plain_generate(model, p, pad, limit) for p in prompts]
        wrong = [[(t + 1) % model.config.vocab_size for t in a] for a in plain.answers]
        again = greedy_answers(model, prompts, limit, pad, drafts=wrong, draft_weights=WeightsIn(model, torch.bfloat16))
    assert again.answers == fresh and again.decoded == 0
    with torch.no_grad():  # right drafts for two rows, none for the third: checked in the pass that reads the prompts
        mixed = greedy_answers(
            model, prompts, limit, pad, drafts=[fresh[0], fresh[1], []], draft_weights=WeightsIn(model, torch.bfloat16)
        )
    assert mixed.answers == fresh and mixed.decoded == 0
