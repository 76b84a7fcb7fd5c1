"""The baseline of an eval report is measured with a fresh LoRA adapter disabled (trainer/evaluation.py's
adds_nothing): only where that gives the base's outputs bit for bit, which is checked here on the tiny Llama. And the
precision reports are measured in (trainer/loading.py's eval_dtype and WeightsIn): bf16 for an fp32 model on a CPU
with native bf16 under ``auto``, the training's own weights given back bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer.evaluation import adds_nothing, masked_logits
from trainer.loading import WeightsIn, eval_dtype

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft(model_dir: Path, **lora: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM", **lora)
    return get_peft_model(base, config).eval()


def _logits(model: Any) -> Any:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, 17), generator=g)
    attention = torch.ones_like(ids)
    attention[0, 12:] = 0  # a padded row, as the scorer pads
    mask = attention[:, 1:].bool()
    with torch.no_grad():
        return masked_logits(model, ids, attention, mask)


def test_a_fresh_adapter_adds_nothing_and_disabling_it_changes_no_bit(tiny_model_dir: Path) -> None:
    import torch

    model = _peft(tiny_model_dir, lora_dropout=0.1)
    assert adds_nothing(model)
    with_adapter = _logits(model)
    with model.disable_adapter():
        without = _logits(model)
    assert torch.equal(with_adapter, without)

    with torch.no_grad():  # one trained step's worth: B is no longer zero
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(1e-3)
    assert not adds_nothing(model)
    trained = _logits(model)
    with model.disable_adapter():
        assert not torch.equal(trained, _logits(model))


@pytest.mark.parametrize("lora", [{"use_dora": True}, {"modules_to_save": ["lm_head"]}])
def test_adapters_that_change_the_model_even_when_fresh_are_measured_as_they_are(
    tiny_model_dir: Path, lora: dict[str, Any]
) -> None:
    assert not adds_nothing(_peft(tiny_model_dir, **lora))


def test_a_plain_model_is_measured_as_it_is(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert not adds_nothing(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)))


def test_reports_measure_in_bf16_where_the_cpu_has_it_and_the_weights_come_back_bit_for_bit(
    tiny_model_dir: Path,
) -> None:
    import torch

    model = _peft(tiny_model_dir)
    with torch.no_grad():  # a trained adapter: B no longer zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = {n: p for n, p in model.named_parameters()}  # the optimizer's references: the same objects after
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert eval_dtype(model, "auto") == (torch.bfloat16 if native else None)
    assert eval_dtype(model, "full") is None
    full = _logits(model)
    with WeightsIn(model, torch.bfloat16).active():
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert eval_dtype(model, "auto") is None  # a model already in bf16 is measured as it is
        half = _logits(model).float()
    # bf16 rounding, not another model: the logits within a few percent of their spread
    assert (half - full).abs().max() < 0.05 * full.std()
    assert torch.argmax(half, dim=-1).eq(torch.argmax(full, dim=-1)).float().mean() > 0.9
    for n, p in model.named_parameters():
        assert p is params[n] and p.dtype == torch.float32 and torch.equal(p, before[n]), n
    with WeightsIn(model, None).active():  # None: nothing changes
        assert torch.equal(_logits(model), full)
    # The baseline's way: the adapter disabled, the base alone measured in bf16.
    with model.disable_adapter():
        base = _logits(model)
        with WeightsIn(model, torch.bfloat16).active():
            base_half = _logits(model).float()
    assert (base_half - base).abs().max() < 0.05 * base.std() and not torch.equal(base, full)
    for n, p in model.named_parameters():
        assert p is params[n] and torch.equal(p, before[n]), n
