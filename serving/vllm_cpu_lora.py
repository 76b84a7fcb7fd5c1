"""Faster multi-LoRA for vLLM on the CPU: two matrix products per layer, not two per slice with a weight copy per token.

vLLM's CPU LoRA path (``PunicaWrapperCPU`` over ``vllm.lora.ops.torch_ops``) runs, for every LoRA layer and step, one
shrink and one expand per output slice (q, k and v are three), each gathering every token's adapter weights
(``weights[indices]``: a ``[tokens, out, rank]`` copy) and, because vLLM's V1 engine marks every step a prefill, first
expanding the per-sequence indices with ``repeat_interleave``. On the CPU those copies cost more than the products.

This replaces ``PunicaWrapperCPU.add_lora_linear`` (what every LoRA linear layer calls) with:

- the step's token-to-slot map worked out once per step (:class:`StepSlots`, in ``update_metadata``), not per op;
- a batch on one adapter: one product against that adapter's A (every slice at once), one ``addmm_`` per slice;
- several adapters: one product of the tokens against the A of every slot in use at once (``slots x slices x rank``
  columns, small), each token keeping its own slot's columns (a 0/1 mask), then one ``addmm_`` per slice against
  those slots' B stacked (a token's zeroed columns add nothing);
- the stacked A and B laid out for those products once per adapter load (:class:`LayerCache`, refreshed when vLLM
  writes a slot: the tensors' version counters move).

Same arithmetic as vLLM's (shrink in float32, expand in the output's dtype), with one difference: a token with no
adapter (index ``-1``) gets no LoRA delta, where vLLM's indexing picks the last slot's weights for it. GPU builds use
vLLM's punica kernels and are left alone; shapes this was not written for go to vLLM's own method.

Applied in every vLLM process through the ``vllm.general_plugins`` entry point ``tunery`` (vLLM's CPU backend spawns
its workers, so the server process patching itself would not reach them; see ``serving/vllm_plugin.py``).
``TUNERY_VLLM_CPU_LORA=vllm`` keeps vLLM's own path (benchmarks compare the two).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

ENV = "TUNERY_VLLM_CPU_LORA"


@dataclass
class StepSlots:
    """Which adapter slot each token of one step uses: ``uniform`` when they all use one (``-1``: none), else the
    range of slots in use (``lo`` to ``hi``, exclusive; vLLM fills slots from the first free one, so the range is
    about as wide as the number of adapters in the step) and a ``[tokens, hi - lo]`` 0/1 mask of each token's own
    slot (tokens with ``-1`` have an all-zero row)."""

    indices: torch.Tensor
    uniform: int | None
    lo: int = 0
    hi: int = 0
    mask: torch.Tensor | None = None

    @classmethod
    def of(cls, indices: torch.Tensor) -> StepSlots:
        indices = indices.detach().clone().long()
        if len(indices) and bool((indices == indices[0]).all()):
            return cls(indices=indices, uniform=int(indices[0]))
        used = indices >= 0
        lo, hi = int(indices[used].min()), int(indices[used].max()) + 1
        mask = torch.zeros(len(indices), hi - lo, dtype=torch.float32)
        rows = used.nonzero().squeeze(1)
        mask[rows, indices[rows] - lo] = 1.0
        return cls(indices=indices, uniform=None, lo=lo, hi=hi, mask=mask)


@dataclass
class LayerWeights:
    """One layer's stacked LoRA weights laid out for the products: A as ``[slots, slices * rank, in]`` (float32),
    B per slice as ``[slots, rank, out_slice]`` (the output's dtype). A range of slots of either is a view of
    ``[slots * slices * rank, in]`` / ``[slots * rank, out]``: no copy per step."""

    versions: tuple[int, ...]
    a: torch.Tensor
    b: list[torch.Tensor]


class LayerCache:
    """:class:`LayerWeights` per layer, rebuilt when vLLM writes a slot (a tensor's version counter moved)."""

    def __init__(self) -> None:
        self._layers: dict[int, tuple[tuple[torch.Tensor, ...], LayerWeights]] = {}

    def get(
        self, a_stacked: tuple[torch.Tensor, ...], b_stacked: tuple[torch.Tensor, ...], dtype: torch.dtype
    ) -> LayerWeights:
        tensors = (*a_stacked, *b_stacked)
        versions = tuple(t._version for t in tensors)
        held = self._layers.get(id(a_stacked[0]))
        if (
            held is not None
            and held[0][0] is a_stacked[0]
            and held[1].versions == versions
            and held[1].b[0].dtype == dtype
        ):
            return held[1]
        # [slots, 1, rank, in] per slice -> [slots, slices * rank, in]
        a = torch.cat([t.squeeze(1) for t in a_stacked], dim=1).to(torch.float32).contiguous()
        # [slots, 1, out, rank] per slice -> [slots, rank, out]
        b = [t.squeeze(1).transpose(1, 2).to(dtype).contiguous() for t in b_stacked]
        weights = LayerWeights(versions=versions, a=a, b=b)
        self._layers[id(a_stacked[0])] = (tensors, weights)
        return weights


def fits(y: torch.Tensor, x: torch.Tensor, a_stacked: Any, b_stacked: Any, output_slices: Any, tokens: int) -> bool:
    """The shapes this was written for (vLLM 0.32's CPU layout); anything else goes to vLLM's own method."""
    if not (len(a_stacked) == len(b_stacked) == len(output_slices) > 0):
        return False
    a0, b0 = a_stacked[0], b_stacked[0]
    if a0.dim() != 4 or b0.dim() != 4 or a0.shape[1] != 1:
        return False
    slots, _, rank, hidden = a0.shape
    for a, b, size in zip(a_stacked, b_stacked, output_slices, strict=True):
        if tuple(a.shape) != (slots, 1, rank, hidden) or tuple(b.shape) != (slots, 1, size, rank):
            return False
    return x.shape[-1] == hidden and y.shape[-1] >= sum(output_slices) and x.numel() // hidden == tokens


def add_lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    a_stacked: tuple[torch.Tensor, ...],
    b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    step: StepSlots,
    cache: LayerCache,
) -> None:
    """``y[t, slice] += scale * x[t] @ A[slot(t)].T @ B[slot(t)].T`` for every token t and output slice, in place."""
    if step.uniform is not None and step.uniform < 0:
        return  # no token of this step uses an adapter
    slots, _, rank, _ = a_stacked[0].shape
    out = y.view(-1, y.shape[-1])
    weights = cache.get(a_stacked, b_stacked, y.dtype)
    inputs = x.reshape(-1, x.shape[-1]).to(torch.float32)
    offsets = [sum(output_slices[:i]) for i in range(len(output_slices))]
    if step.uniform is not None:
        slot = step.uniform % slots
        shrunk = inputs @ weights.a[slot].T  # [tokens, slices * rank]
        if scale != 1.0:
            shrunk.mul_(scale)
        shrunk = shrunk.to(y.dtype)
        for i, (offset, size) in enumerate(zip(offsets, output_slices, strict=True)):
            out[:, offset : offset + size].addmm_(shrunk[:, i * rank : (i + 1) * rank], weights.b[i][slot])
        return
    assert step.mask is not None
    lo, hi = step.lo, step.hi
    tokens, slices, n = inputs.shape[0], len(output_slices), hi - lo
    # Every slot in the step's range at once, [tokens, n * slices * rank]; each token keeps its own slot's columns.
    every = inputs @ weights.a[lo:hi].reshape(n * slices * rank, -1).T
    mask = step.mask if scale == 1.0 else step.mask * scale
    every = every.view(tokens, n, slices, rank).mul_(mask[:, :, None, None]).to(y.dtype)
    for i, (offset, size) in enumerate(zip(offsets, output_slices, strict=True)):
        mine = every[:, :, i, :].reshape(tokens, n * rank)
        out[:, offset : offset + size].addmm_(mine, weights.b[i][lo:hi].reshape(n * rank, size))


def patch() -> bool:
    """Install the fused method into vLLM's CPU punica wrapper; False when not on the CPU or turned off."""
    if os.environ.get(ENV, "fused") not in ("fused", "grouped"):  # "grouped": the name an earlier release used
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    if getattr(PunicaWrapperCPU.add_lora_linear, "tunery", False):
        return True
    original_linear = PunicaWrapperCPU.add_lora_linear
    original_update = PunicaWrapperCPU.update_metadata

    def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
        original_update(self, *args, **kwargs)
        self._tunery_step = StepSlots.of(self.token_lora_indices)

    def fused_add_lora_linear(
        self: Any,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: Any = None,
        **kwargs: Any,
    ) -> None:
        step = getattr(self, "_tunery_step", None)
        if (
            buffer is not None
            or kwargs
            or step is None
            or not fits(y, x, lora_a_stacked, lora_b_stacked, output_slices, len(step.indices))
        ):
            return original_linear(  # type: ignore[no-any-return]
                self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
            )
        if not hasattr(self, "_tunery_cache"):
            self._tunery_cache = LayerCache()
        add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, step, self._tunery_cache)

    fused_add_lora_linear.tunery = True  # type: ignore[attr-defined]
    PunicaWrapperCPU.update_metadata = update_metadata
    PunicaWrapperCPU.add_lora_linear = fused_add_lora_linear
    # Under vLLM's logger, so it lands in vLLM's log (pid included): the tests look for it.
    logging.getLogger("vllm.tunery").info("Tunery's CPU multi-LoRA ops installed (pid %d)", os.getpid())
    return True
