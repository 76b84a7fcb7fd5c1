"""trainer/kernels.py: on the CPU, a run's model scores only the labelled positions through TRL's fused LM head, and
that changes nothing it computes: the same per-token log-probabilities, entropy and top-1 flags, the same loss and
gradients. Other models in the process keep TRL's own choice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainer.kernels import fused_head_model, score_labelled_positions_only


@pytest.fixture
def trl_utils(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """TRL's fused-head module with its own choice restored (whatever ran before in this process), and restored
    again after the test."""
    import trl.trainer.utils as utils

    monkeypatch.setattr(utils, "_use_triton", getattr(utils._use_triton, "__wrapped__", utils._use_triton))
    yield utils


def packed_row(vocab: int) -> dict[str, Any]:
    """Three examples packed into one row (position ids restart at 0), labels on each one's last few tokens only, as
    a chat example's assistant turn."""
    import torch

    g = torch.Generator().manual_seed(0)
    lengths, labelled = (23, 9, 31), (5, 3, 12)
    ids = torch.randint(4, vocab, (1, sum(lengths)), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = torch.full_like(ids, -100)
    start = 0
    for n, k in zip(lengths, labelled, strict=True):
        labels[0, start + n - k : start + n] = ids[0, start + n - k : start + n]
        start += n
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def forward(model: Any, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fused head's per-token outputs and the LoRA weights' gradients of its loss."""
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    fields = {k: getattr(out, k).detach().clone() for k in ("log_probs", "entropy", "is_top1", "label_mask")}
    fields["loss"] = out.loss.detach().clone()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return fields, grads


def fused_lora_model(tiny_model_dir: Path, trl_utils: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    trl_utils.add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, config)  # random A and B: every LoRA weight has a gradient


def test_the_cpu_scores_only_labelled_positions_and_computes_the_same(tiny_model_dir: Path, trl_utils: Any) -> None:
    import torch

    model = fused_lora_model(tiny_model_dir, trl_utils)
    other = fused_lora_model(tiny_model_dir, trl_utils)  # another TRL model in the process: not ours
    batch = packed_row(model.config.vocab_size)
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())

    scored: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden: Any, *rest: Any) -> Any:
        scored.append(hidden.shape[0])
        return apply(hidden, *rest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
        every, every_grads = forward(model, batch)
        assert score_labelled_positions_only(fused_head_model(model))
        assert score_labelled_positions_only(fused_head_model(model))  # idempotent: wraps once
        compact, compact_grads = forward(model, batch)
        forward(other, batch)

    width = batch["input_ids"].shape[1] - 1
    assert scored == [width, n_labelled, width] and n_labelled < width / 3
    assert torch.equal(every["label_mask"], compact["label_mask"])
    assert torch.equal(every["is_top1"], compact["is_top1"])
    for key in ("log_probs", "entropy", "loss"):
        torch.testing.assert_close(compact[key], every[key], rtol=1e-5, atol=1e-6)
    assert every_grads.keys() == compact_grads.keys() and len(every_grads) > 10
    for name, grad in every_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(compact_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Outside a forward of ours, and off the CPU, the choice stays TRL's own.
    assert trl_utils._use_triton(torch.device("cpu")) is False
    assert trl_utils._use_triton(torch.device("meta")) is False


def test_a_run_trainer_scores_labelled_positions_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The trainer every method builds (build_trainer) gets it."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import trl_config
    from trainer.loading import lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.base import Datasets
    from tunery.plan import LoraPlan, TrainingPlan

    plan = TrainingPlan(n_epochs=1, batch_size=2, learning_rate=1e-3, lora=LoraPlan(r=4, alpha=8))
    sft = get_method("supervised")
    args = trl_config(sft, plan, seed=0, output_dir=str(tmp_path), choice=resolve_device("cpu"))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    data = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]], "assistant_masks": [[0, 0, 1, 1]]})
    trainer = sft.build_trainer(model, tok, args, lora_config(plan), Datasets(train=data, valid=None, n_examples=1))
    assert getattr(fused_head_model(trainer).forward, "_tunery_labelled_only", False)
