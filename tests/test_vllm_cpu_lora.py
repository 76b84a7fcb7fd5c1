"""Tunery's CPU multi-LoRA ops for vLLM (serving/vllm_cpu_lora.py) give vLLM's results: checked here against vLLM's
own per-token formula, written out, for the shapes vLLM uses (shrink to the rank, expand from it, slices, several
adapters, the -1 index); test_vllm_serving.py checks the answers of a real vLLM running them."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from serving.vllm_cpu_lora import make_ops


def _per_token(inputs: Any, weights: Any, indices: Any) -> Any:
    selected = weights[indices]
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return torch.einsum("bi, boi -> bo", inputs, selected)


calls: list[str] = []


def _shrink(inputs: Any, w: Any, out: Any, idx: Any, scaling: float = 1.0) -> None:
    calls.append("shrink")
    res = _per_token(inputs, w, idx)
    out[:, : res.shape[1]] = scaling * res


def _expand(inputs: Any, w: Any, out: Any, idx: Any, add: bool = True) -> None:
    calls.append("expand")
    res = _per_token(inputs, w, idx)
    limit = 1 if res.shape[0] == 1 and out.shape[0] != 1 else out.shape[0]
    n = min(res.shape[1], out.shape[1])
    if add:
        out[:, :n] += res[:limit, :n]
    else:
        out[:, :n] = res[:limit, :n]


def _expand_slice(inputs: Any, w: Any, out: Any, idx: Any, offset: int, size: int, add: bool = True) -> None:
    calls.append("slice")
    res = _per_token(inputs, w, idx)
    if add:
        out[:, offset : offset + size] += res
    else:
        out[:, offset : offset + size] = res


VLLM = types.SimpleNamespace(bgmv_shrink=_shrink, bgmv_expand=_expand, bgmv_expand_slice=_expand_slice)


@pytest.mark.parametrize("tokens", [1, 16, 300])
@pytest.mark.parametrize("pattern", ["one", "several", "with_minus_one"])
def test_ops_match_vllms_per_token_formula(tokens: int, pattern: str) -> None:
    torch.manual_seed(tokens)
    ops = make_ops(VLLM)
    slots, hidden, rank, out_dim = 8, 96, 8, 160
    x = torch.randn(tokens, hidden)
    a = torch.randn(slots, 1, rank, hidden)
    b = torch.randn(slots, 1, out_dim, rank)
    idx = {
        "one": torch.full((tokens,), 3),
        "several": torch.randint(0, 5, (tokens,)),
        "with_minus_one": torch.randint(-1, 3, (tokens,)),
    }[pattern]
    calls.clear()
    mine, ref = torch.zeros(tokens, rank), torch.zeros(tokens, rank)
    ops["bgmv_shrink"](x, a, mine, idx, 0.5)
    _shrink(x, a, ref, idx, 0.5)
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)
    for add in (True, False):
        y_mine, y_ref = torch.ones(tokens, out_dim), torch.ones(tokens, out_dim)
        ops["bgmv_expand"](ref, b, y_mine, idx, add)
        _expand(ref, b, y_ref, idx, add)
        torch.testing.assert_close(y_mine, y_ref, rtol=1e-4, atol=1e-4)
        s_mine, s_ref = torch.ones(tokens, 3 * out_dim), torch.ones(tokens, 3 * out_dim)
        ops["bgmv_expand_slice"](ref, b, s_mine, idx, out_dim, out_dim, add)
        _expand_slice(ref, b, s_ref, idx, out_dim, out_dim, add)
        torch.testing.assert_close(s_mine, s_ref, rtol=1e-4, atol=1e-4)
    assert calls == ["shrink", "expand", "slice", "expand", "slice"]  # only the reference calls: none fell back


def test_shapes_it_was_not_written_for_go_to_vllms_op() -> None:
    ops = make_ops(VLLM)
    calls.clear()
    out = torch.zeros(4, 6)
    ops["bgmv_expand"](torch.randn(1, 2), torch.randn(3, 6, 2), out, torch.tensor([1]), True)  # broadcast row
    many = torch.randn(200, 8, 4)  # 200 slots x rank 4: past the dense form's columns
    ops["bgmv_shrink"](torch.randn(5, 4), many, torch.zeros(5, 8), torch.tensor([0, 1, 2, 3, 4]), 1.0)
    assert calls == ["expand", "shrink"]
