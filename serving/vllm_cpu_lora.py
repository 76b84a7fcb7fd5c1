"""Faster multi-LoRA for vLLM on the CPU: a few matrix products per layer, not one weight copy per token.

vLLM's CPU LoRA path (``vllm.lora.ops.torch_ops``) gathers each token's adapter weights (``weights[indices]``: a
``[tokens, out, rank]`` copy per layer and step) and multiplies with ``einsum``; on the CPU that copy costs more than
the product. LoRA ranks are small, so this multiplies every token with every adapter slot at once (``slots x rank``
columns) and keeps each token's own slice, or with the one adapter when the whole batch uses one: the same results
(the same weights, ``-1`` included, which picks the last slot as vLLM's indexing does). GPU builds use vLLM's punica
kernels and are left alone.

Applied in every vLLM process through the ``vllm.general_plugins`` entry point ``tunery`` (vLLM's CPU backend spawns
its workers, so the server process patching itself would not reach them; see ``serving/vllm_plugin.py``).
``TUNERY_VLLM_CPU_LORA=vllm`` keeps vLLM's own path (benchmarks compare the two).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

# Past this many columns (adapter slots x rank) the one-product-for-all-slots form costs more than vLLM's own path.
DENSE_MAX_COLUMNS = 512


def _product(inputs: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """``out[t] = inputs[t] @ weights[indices[t]].T`` for every token t, without a weight copy per token; None when
    the shapes are not the ones this was written for (the caller then uses vLLM's op).

    One adapter in the batch: one product. Several: one product against every slot at once (``slots x rank`` columns,
    small), keeping each token's own slice. Measured on two cores with SmolLM2-135M's shapes (rank 8, 8 slots): 16
    decode tokens 1.6x to 2.5x faster than vLLM's op, 512 prefill tokens 7x to 9x."""
    if not (inputs.dim() == 2 and indices.dim() == 1 and inputs.shape[0] == indices.shape[0] and len(indices)):
        return None
    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    inputs = inputs.to(dtype=dtype)
    first = indices[0]
    if bool((indices == first).all()):
        return inputs @ weights[int(first)].to(dtype=dtype).T
    slots, out_dim, in_dim = weights.shape
    if slots * min(out_dim, in_dim) > DENSE_MAX_COLUMNS:
        return None
    slot = (indices % slots)[:, None]  # -1 is the last slot, as vLLM's indexing has it
    if out_dim <= in_dim:  # shrink (to the rank): every slot's product, then each token's slice
        every = inputs @ weights.reshape(slots * out_dim, in_dim).to(dtype=dtype).T
        return every.gather(1, slot * out_dim + torch.arange(out_dim))
    # expand (from the rank): each token's input placed in its slot's columns, times every slot's weights at once
    placed = inputs.new_zeros((inputs.shape[0], slots * in_dim))
    placed.scatter_(1, slot * in_dim + torch.arange(in_dim), inputs)
    return placed @ weights.permute(0, 2, 1).reshape(slots * in_dim, out_dim).to(dtype=dtype)


def make_ops(original: Any) -> dict[str, Any]:
    """Drop-in replacements of vLLM's ``bgmv_shrink``, ``bgmv_expand`` and ``bgmv_expand_slice`` (the ``sgmv_*``
    prefill variants call these). Any call whose shapes they were not written for goes to vLLM's own op."""

    def bgmv_shrink(inputs: Any, lora_a: Any, output: Any, indices: Any, scaling: float = 1.0) -> None:
        outputs = _product(inputs, lora_a, indices, output.dtype)
        if outputs is None:
            return original.bgmv_shrink(inputs, lora_a, output, indices, scaling)  # type: ignore[no-any-return]
        output[:, : outputs.shape[1]] = scaling * outputs

    def bgmv_expand(inputs: Any, lora_b: Any, output: Any, indices: Any, add_inputs: bool = True) -> None:
        outputs = _product(inputs, lora_b, indices, output.dtype) if output.shape[0] == inputs.shape[0] else None
        if outputs is None:
            return original.bgmv_expand(inputs, lora_b, output, indices, add_inputs)  # type: ignore[no-any-return]
        common = min(outputs.shape[1], output.shape[1])
        if add_inputs:
            output[:, :common] += outputs[:, :common]
        else:
            output[:, :common] = outputs[:, :common]

    def bgmv_expand_slice(
        inputs: Any, lora_b: Any, output: Any, indices: Any, slice_offset: int, slice_size: int, add_inputs: bool = True
    ) -> None:
        outputs = _product(inputs, lora_b, indices, output.dtype)
        if outputs is None:
            return original.bgmv_expand_slice(  # type: ignore[no-any-return]
                inputs, lora_b, output, indices, slice_offset, slice_size, add_inputs
            )
        if add_inputs:
            output[:, slice_offset : slice_offset + slice_size] += outputs
        else:
            output[:, slice_offset : slice_offset + slice_size] = outputs

    return {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def patch() -> bool:
    """Install the grouped ops into vLLM's CPU LoRA path; False when not on the CPU or turned off."""
    if os.environ.get("TUNERY_VLLM_CPU_LORA", "grouped") != "grouped":
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    import types

    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, "tunery", False):
        return True
    original = types.SimpleNamespace(**{name: getattr(lora_ops, name) for name in make_ops(None)})
    for name, op in make_ops(original).items():
        op.tunery = True  # type: ignore[attr-defined]
        setattr(lora_ops, name, op)  # what the sgmv_* prefill ops call
        setattr(punica_cpu, name, op)  # what the CPU punica wrapper imported by name
    # Under vLLM's logger, so it lands in vLLM's log (pid included): the tests look for it.
    logging.getLogger("vllm.tunery").info("Tunery's CPU multi-LoRA ops installed (pid %d)", os.getpid())
    return True
