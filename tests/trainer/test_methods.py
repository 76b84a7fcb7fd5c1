"""The method contract: every combination of method x adapter that ``tunery.methods.METHODS`` says is supported, in
fp32 on the tiny model, through the same assertions: the weights changed, the final model and a checkpoint are
servable, and a run paused and resumed ends where an uninterrupted one does.

Each run is the real trainer (``trainer.run.run``) in this process, with a local object store and the in-test
gRPC TrainerReporting service; serving is the embedded engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_preference import preference_examples
from tests.trainer_fixtures import RUN_TOKEN, chat_examples, jsonl_bytes, make_spec, pausing_server
from trainer.errors import RunStopped
from trainer.reporter import Reporter
from trainer.run import StopSignal, run
from tunery.jobspec import JobSpec
from tunery.methods import ADAPTERS, METHODS
from tunery.plan import ReinforcementPlan
from tunery.storage import ObjectStore, open_store

pytestmark = pytest.mark.integration  # trains through the trainer: make test, not test-fast

__all__ = ["pausing_server"]

COMBINATIONS = [(m, a) for m in METHODS for a in ADAPTERS if a in METHODS[m].adapters]
N_EXAMPLES, EPOCHS, BATCH = 8, 2, 2  # 4 steps an epoch, 8 steps; checkpoints at 4 and 8
# A reinforcement job's grader: how close the sampled answer is to the line's answer (a graded reward, so the
# completions of a group differ and the policy moves even on the tiny random model).
SIMILARITY = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


def reinforcement_examples(n: int) -> list[dict[str, Any]]:
    return [{"messages": m["messages"][:-1], "answer": m["messages"][-1]["content"]} for m in chat_examples(n)]


def _examples(data: str, n: int) -> list[dict[str, Any]]:
    if data == "supervised":
        return chat_examples(n)
    return preference_examples(n) if data == "preference" else reinforcement_examples(n)


def _spec(tmp_path: Path, tiny_model_dir: Path, address: str, method: str, adapter: str) -> JobSpec:
    root = tmp_path / "objects"
    info = METHODS[method]
    examples = _examples(info.data, N_EXAMPLES)
    open_store(str(root)).put_bytes("files/file-train", jsonl_bytes(examples))
    spec = make_spec(
        base_model_path=tiny_model_dir,
        object_store=root,
        reporting_address=address,
        n_epochs=EPOCHS,
        batch_size=BATCH,
        max_seq_length=128,
    )
    plan = spec.plan.model_copy(
        update={
            "method": method,
            "adapter": adapter,
            "precision": "fp32",
            "beta": 0.1 if info.beta else None,
            "packing": info.packing,
            "learning_rate": 1e-4 if adapter == "full" else 5e-3,
            "reinforcement": ReinforcementPlan(
                grader=SIMILARITY, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0
            )
            if info.reinforcement
            else None,
        }
    )
    return spec.model_copy(update={"plan": plan})


def _run(spec: JobSpec) -> Any:
    stop = StopSignal()
    reporter = Reporter(spec.reporting_address, spec.job_id, RUN_TOKEN, on_stop=stop.set)
    try:
        return run(spec, reporter, stop)
    finally:
        reporter.close(timeout=10)


def _losses(servicer: Any) -> dict[int, float]:
    return {m.metrics.step: m.metrics.train_loss for m in servicer.of("Metrics")}


def _tensors(store: ObjectStore, prefix: str, tmp: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    folder = tmp / prefix.replace("/", "_")
    store.get_dir(prefix, folder)
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def _weights_changed(store: ObjectStore, prefix: str, adapter: str, tiny_model_dir: Path, tmp: Path) -> None:
    tensors = _tensors(store, prefix, tmp)
    if adapter == "full":
        from safetensors.torch import load_file

        base = load_file(str(tiny_model_dir / "model.safetensors"))
        moved = [k for k, v in tensors.items() if k in base and not (v.float() - base[k].float()).abs().max() < 1e-7]
        assert len(moved) > len(tensors) // 2, (len(moved), len(tensors))
        return
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert lora_b, sorted(tensors)
    # PEFT initializes lora_B at zero: a trained adapter's are not.
    assert all(float(v.abs().max()) > 0 for v in lora_b.values())
    assert not any(".ref." in k for k in tensors)  # only the trained adapter is written


def _serves(store: ObjectStore, prefix: str, tiny_model_dir: Path, tmp: Path, name: str) -> None:
    from serving.engine import EmbeddedEngine
    from serving.protocol import ModelRef
    from serving.sampling import SamplingParams

    engine = EmbeddedEngine(store, tmp / f"serve-{name}", device="cpu")
    out = engine.generate(
        ModelRef("tiny-llama", str(tiny_model_dir), adapter_name=name, adapter_prefix=prefix),
        [{"role": "user", "content": "Hello there"}],
        SamplingParams(max_tokens=3, temperature=0),
    )
    assert out.completion_tokens >= 1 and out.prompt_tokens > 0


@pytest.mark.parametrize(("method", "adapter"), COMBINATIONS, ids=[f"{m}-{a}" for m, a in COMBINATIONS])
def test_every_supported_combination_trains_serves_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, pausing_server: Any, method: str, adapter: str
) -> None:
    if adapter == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes in the trainer's environment")
    servicer, address = pausing_server
    total = EPOCHS * math.ceil(N_EXAMPLES / BATCH)

    # Uninterrupted.
    ref_dir = tmp_path / "ref"
    ref = _spec(ref_dir, tiny_model_dir, address, method, adapter)
    result = _run(ref)
    reference = _losses(servicer)
    assert result.total_steps == total and sorted(reference) == list(range(1, total + 1))
    assert all(math.isfinite(v) for v in reference.values())
    store = open_store(ref.object_store)
    manifest = json.loads(store.get_bytes(f"{result.model_prefix}/tunery_manifest.json"))
    assert (manifest["method"], manifest["adapter"], manifest["precision"]) == (method, adapter, "fp32")
    _weights_changed(store, result.model_prefix, adapter, tiny_model_dir, tmp_path)
    _serves(store, result.model_prefix, tiny_model_dir, tmp_path, f"ft:tiny:{method}-{adapter}")
    first_checkpoint = result.checkpoints[0]
    _serves(store, first_checkpoint, tiny_model_dir, tmp_path, f"ft:tiny:{method}-{adapter}:ckpt")

    # Paused after step 3, then resumed from its state: the same losses as the uninterrupted run.
    servicer.calls.clear()
    servicer.pause_after_step = 3
    spec = _spec(tmp_path / "paused", tiny_model_dir, address, method, adapter)
    with pytest.raises(RunStopped):
        _run(spec)
    paused_at = max(_losses(servicer))
    assert 3 <= paused_at < total
    servicer.calls.clear()
    servicer.pause_after_step = None
    servicer.paused = False
    resumed = _run(spec.model_copy(update={"resume_from": "latest"}))
    second = _losses(servicer)
    assert resumed.total_steps == total and sorted(second) == list(range(paused_at + 1, total + 1))
    for step in second:
        assert second[step] == pytest.approx(reference[step], rel=1e-3, abs=1e-4), (step, second, reference)


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_a_preference_job_on_a_fine_tuned_model_continues_its_adapter(
    tmp_path: Path, tiny_model_dir: Path, pausing_server: Any, method: str
) -> None:
    """Regression: a preference job whose ``model`` is an ``ft:`` model trained a fresh adapter. It continues the
    parent's (its rank, not the plan's), and the reference of DPO and KTO is the parent, so the first step
    compares the parent with itself."""
    servicer, address = pausing_server
    parent = _spec(tmp_path / "parent", tiny_model_dir, address, "supervised", "lora")
    parent_result = _run(parent)
    parent_store = open_store(parent.object_store)
    child = _spec(tmp_path / "parent", tiny_model_dir, address, method, "lora")
    child = child.model_copy(
        update={
            "job_id": "ftjob-child",
            "output_prefix": "jobs/ftjob-child",
            "init_adapter_prefix": parent_result.model_prefix,
            "plan": child.plan.model_copy(update={"lora": child.plan.lora.model_copy(update={"r": 4})}),
        }
    )
    servicer.calls.clear()
    result = _run(child)
    config = json.loads(parent_store.get_bytes(f"{result.model_prefix}/adapter_config.json"))
    assert config["r"] == parent.plan.lora.r != 4  # the parent's adapter, continued
    before = _tensors(parent_store, parent_result.model_prefix, tmp_path)
    after = _tensors(parent_store, result.model_prefix, tmp_path)
    assert before.keys() == after.keys()
    assert any(float((after[k] - before[k]).abs().max()) > 0 for k in before)
    manifest = json.loads(parent_store.get_bytes(f"{result.model_prefix}/tunery_manifest.json"))
    assert manifest["init_adapter_prefix"] == parent_result.model_prefix
    if method == "orpo":
        assert manifest["preference"]["reference_model"] is None
    else:
        assert manifest["preference"]["reference_model"].startswith("the fine-tuned model")
        # Policy and reference are both the parent at step 1: DPO's loss is log 2.
        if method == "dpo":
            first = _losses(servicer)[1]
            assert first == pytest.approx(math.log(2), abs=1e-3)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_a_preference_run_honours_its_precision(tmp_path: Path, tiny_model_dir: Path, method: str) -> None:
    """Regression: the preference methods ignored ``precision`` (and trained fp32 whatever was asked). bf16 on this
    CPU-only trainer is refused before the model is loaded, as for supervised jobs."""
    from trainer.errors import TrainerError

    spec = _spec(tmp_path, tiny_model_dir, "127.0.0.1:1", method, "lora")
    spec = spec.model_copy(update={"plan": spec.plan.model_copy(update={"precision": "bf16"})})
    with pytest.raises(TrainerError) as e:
        _run(spec)
    assert (e.value.code, e.value.param) == ("unsupported_hardware", "tunery.training.precision")
