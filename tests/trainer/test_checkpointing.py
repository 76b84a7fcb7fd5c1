"""Gradient checkpointing (``tunery.training.gradient_checkpointing``, decided by tunery.estimate's rule where it is
``auto``) changes how a step is computed, never what it computes: a short run's losses and its adapter's weights are
the same with it and without it (fp32 on the CPU), and the run's model recomputes its activations only when the plan
says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import reporting_server

__all__ = ["reporting_server"]  # a fixture


def run(tiny_model_dir: Path, tmp_path: Path, checkpointing: bool | None) -> tuple[list[float], dict[str, Any], bool]:
    """Three optimizer steps of LoRA SFT through the trainer every method builds: the logged losses, the adapter's
    weights after them, and whether the model recomputed its activations."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import trl_config
    from trainer.loading import lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.base import Datasets
    from tunery.plan import LoraPlan, TrainingPlan

    plan = TrainingPlan(
        n_epochs=1,
        batch_size=2,
        learning_rate=1e-2,
        lora=LoraPlan(r=4, alpha=8),
        gradient_checkpointing=checkpointing,
    )
    choice = resolve_device("cpu", plan.precision, plan.adapter, plan.gradient_checkpointing)
    sft = get_method("supervised")
    args = trl_config(sft, plan, seed=0, output_dir=str(tmp_path / str(checkpointing)), choice=choice)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(4, tok.vocab_size, (n,), generator=g).tolist() for n in (17, 9, 24, 13, 30, 11)]
    data = Dataset.from_dict(
        {"input_ids": rows, "assistant_masks": [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in rows]}
    )
    trainer = sft.build_trainer(model, tok, args, lora_config(plan), Datasets(train=data, valid=None, n_examples=6))
    trainer.train()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    recomputed = bool(getattr(trainer.model.get_base_model(), "is_gradient_checkpointing", False))
    return losses, weights, recomputed


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' is_gradient_checkpointing deprecation
def test_a_run_computes_the_same_with_gradient_checkpointing(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    plain, plain_weights, plain_recomputed = run(tiny_model_dir, tmp_path, False)
    checkpointed, weights, recomputed = run(tiny_model_dir, tmp_path, True)
    assert (plain_recomputed, recomputed) == (False, True)
    assert len(plain) == 3 and plain[0] != plain[-1]  # it trained
    # Stated tolerance: fp32 on the CPU, recomputed activations give the same loss to 1e-5 relative.
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    assert weights.keys() == plain_weights.keys() and weights
    for name, w in weights.items():
        torch.testing.assert_close(w, plain_weights[name], rtol=1e-4, atol=1e-6, msg=name)
    # A plan stored before the decision (None) keeps what such runs had: off on the CPU.
    assert run(tiny_model_dir, tmp_path, None)[2] is False


def out_of_memory_at_the_second_step(
    spec: Any, address: str, trainer_class: type, monkeypatch: pytest.MonkeyPatch, allocating: str
) -> Any:
    """The TrainerError of ``spec``'s run when ``trainer_class``'s second training step raises PyTorch's
    out-of-memory error as CUDA raises it (no GPU here), trying to allocate ``allocating``."""
    import torch

    from tests.trainer_fixtures import RUN_TOKEN
    from trainer.errors import TrainerError
    from trainer.reporter import Reporter
    from trainer.run import StopSignal, run

    step = trainer_class.training_step  # type: ignore[attr-defined]
    calls = []

    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {allocating}.")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(trainer_class, "training_step", training_step)
    reporter = Reporter(address, spec.job_id, RUN_TOKEN)
    try:
        with pytest.raises(TrainerError) as caught:
            run(spec, reporter, StopSignal())
    finally:
        reporter.close(timeout=10)
    return caught.value


def test_a_run_out_of_gpu_memory_says_what_to_change(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch's out-of-memory error in a step fails the run with ``out_of_memory`` at that step, naming gradient
    checkpointing first when the run had it off."""
    from transformers import Trainer

    from tests.trainer_fixtures import chat_examples, jsonl_bytes, make_spec
    from tunery.storage import open_store

    _, address = reporting_server
    root = tmp_path / "objects"
    open_store(str(root)).put_bytes("files/file-train", jsonl_bytes(chat_examples(8)))
    spec = make_spec(base_model_path=tiny_model_dir, object_store=root, reporting_address=address, n_epochs=1)
    e = out_of_memory_at_the_second_step(spec, address, Trainer, monkeypatch, "2.00 GiB")
    assert (e.code, e.param) == ("out_of_memory", "tunery.training.gradient_checkpointing")
    assert e.message.startswith("out of GPU memory at step 2: set tunery.training.gradient_checkpointing to true")
    assert "Tried to allocate 2.00 GiB" in e.message


def test_a_reinforcement_run_out_of_gpu_memory_names_the_answers_it_samples(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reinforcement step trains ``batch_size x num_generations`` sampled answers: out of GPU memory, the run names
    those and their length (after gradient checkpointing, off here), not ``max_seq_length``."""
    from trl import GRPOTrainer

    from tests.trainer_fixtures import keyword_task_spec

    _, address = reporting_server
    spec = keyword_task_spec(
        keyword="word",
        base_model_path=tiny_model_dir,
        object_store=tmp_path / "objects",
        reporting_address=address,
        n_epochs=1,
    )
    e = out_of_memory_at_the_second_step(spec, address, GRPOTrainer, monkeypatch, "3.00 GiB")
    assert (e.code, e.param) == ("out_of_memory", "tunery.training.gradient_checkpointing")
    assert e.message.startswith("out of GPU memory at step ")
    assert (
        "more gradient_accumulation_steps), tunery.reinforcement.num_generations or tunery.reinforcement." in e.message
    )
    assert "batch_size x num_generations sampled answers." in e.message  # generate sampled: no vLLM share
    assert "max_seq_length" not in e.message and "Tried to allocate 3.00 GiB" in e.message


def test_the_share_of_the_gpu_a_colocated_vllm_holds_is_in_the_advice() -> None:
    """With vLLM colocated, part of the GPU is its: the advice says how much, and with checkpointing already on it
    names the answers a step samples."""
    import torch

    from trainer.errors import out_of_memory

    e = out_of_memory(torch.OutOfMemoryError("CUDA out of memory."), 7, True, reinforcement=True, sampler_share=0.35)
    assert e is not None and e.param == "tunery.reinforcement.num_generations"
    assert e.message.startswith("out of GPU memory at step 7: give a smaller batch_size")
    assert "(vLLM holds 35% of this GPU to sample them)" in e.message
    assert out_of_memory(RuntimeError("CUDA out of memory."), 7, True, reinforcement=True) is None
