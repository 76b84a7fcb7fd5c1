"""Tunery's fused CPU multi-LoRA for vLLM (serving/vllm_cpu_lora.py) gives LoRA's results: checked here against the
per-token formula, written out, for vLLM's stacked layout (q/k/v slices, several adapters, tokens without one, bf16);
test_vllm_serving.py checks the answers of a real vLLM running it."""

from __future__ import annotations

import pytest
import torch

from serving.vllm_cpu_lora import LayerCache, StepSlots, add_lora_linear, fits

SLOTS, HIDDEN, RANK = 8, 96, 8


def _stacked(slices: tuple[int, ...], seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) for _ in slices)
    b = tuple(torch.randn(SLOTS, 1, size, RANK, generator=g) for size in slices)
    return a, b


def _reference(y, x, a, b, scale, slices, indices):  # type: ignore[no-untyped-def]
    """LoRA, one token at a time: y[t, slice] += scale * B[slot] @ (A[slot] @ x[t]); no adapter, no delta."""
    y = y.clone().double()
    for t, slot in enumerate(indices.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a_i, b_i, size in zip(a, b, slices, strict=True):
            delta = b_i[slot, 0].double() @ (a_i[slot, 0].double() @ x[t].double())
            y[t, offset : offset + size] += scale * delta
            offset += size
    return y


PATTERNS = {
    "one": lambda n: torch.full((n,), 3),
    "several": lambda n: torch.arange(n) % 5,
    "with_none": lambda n: torch.arange(n) % 4 - 1,
    "none": lambda n: torch.full((n,), -1),
    "last_slot": lambda n: torch.full((n,), SLOTS - 1),
    "sparse": lambda n: torch.where(torch.arange(n) % 3 == 0, 6, 1),
}


@pytest.mark.parametrize("tokens", [1, 16, 300])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("slices", [(160,), (160, 32, 32)])
def test_fused_lora_matches_the_per_token_formula(tokens: int, pattern: str, slices: tuple[int, ...]) -> None:
    a, b = _stacked(slices, seed=tokens)
    x = torch.randn(tokens, HIDDEN)
    indices = PATTERNS[pattern](tokens)
    y = torch.randn(tokens, sum(slices) + 7)  # wider than the slices: the rest is left alone
    expected = _reference(y, x, a, b, 0.5, slices, indices)
    assert fits(y, x, a, b, slices, tokens)
    add_lora_linear(y, x, a, b, 0.5, slices, StepSlots.of(indices), LayerCache())
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-3)


def test_bfloat16_outputs_match_within_bf16_precision() -> None:
    slices = (160, 32, 32)
    a, b = _stacked(slices, seed=1)
    b = tuple(t.to(torch.bfloat16) for t in b)
    x = torch.randn(40, HIDDEN).to(torch.bfloat16)
    indices = torch.arange(40) % 3
    y = torch.zeros(40, sum(slices), dtype=torch.bfloat16)
    expected = _reference(y, x, a, b, 1.0, slices, indices)
    add_lora_linear(y, x, a, b, 1.0, slices, StepSlots.of(indices), LayerCache())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=0.5)


def test_a_slot_rewritten_in_place_is_picked_up() -> None:
    """vLLM loads an adapter by copying into a slot of the stacked tensors: the cached layout must follow."""
    slices = (64,)
    a, b = _stacked(slices, seed=2)
    x, indices, cache = torch.randn(4, HIDDEN), torch.tensor([1, 1, 2, 2]), LayerCache()
    add_lora_linear(torch.zeros(4, 64), x, a, b, 1.0, slices, StepSlots.of(indices), cache)
    a[0][1].copy_(torch.randn(1, RANK, HIDDEN))
    b[0][2].zero_()
    y = torch.zeros(4, 64)
    add_lora_linear(y, x, a, b, 1.0, slices, StepSlots.of(indices), cache)
    expected = _reference(torch.zeros(4, 64), x, a, b, 1.0, slices, indices)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-3)
    assert not y[2:].any()


def test_step_slots_are_a_snapshot_of_the_indices() -> None:
    """vLLM reuses its index buffer between steps; the step's map must not change under a layer."""
    indices = torch.tensor([2, 2, 4])
    step = StepSlots.of(indices)
    indices.fill_(0)
    assert step.uniform is None and (step.lo, step.hi) == (2, 5)
    assert step.mask is not None and step.mask.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert StepSlots.of(torch.tensor([2, 2])).uniform == 2
    none_and_three = StepSlots.of(torch.tensor([-1, 3]))
    assert (none_and_three.lo, none_and_three.hi) == (3, 4) and none_and_three.mask is not None
    assert none_and_three.mask.tolist() == [[0], [1]]


def test_unexpected_shapes_are_left_to_vllm() -> None:
    a, b = _stacked((32, 32), seed=3)
    x, y = torch.randn(5, HIDDEN), torch.zeros(5, 64)
    assert fits(y, x, a, b, (32, 32), 5)
    assert not fits(y, x, a, b, (32,), 5)  # slices disagree
    assert not fits(y, x, a, b, (32, 16), 5)  # B's rows are not the slice
    assert not fits(y, x, a, b, (32, 32), 6)  # not one index per token
    assert not fits(y, torch.randn(5, HIDDEN + 1), a, b, (32, 32), 5)
    assert not fits(y, x, tuple(t.squeeze(1) for t in a), b, (32, 32), 5)
