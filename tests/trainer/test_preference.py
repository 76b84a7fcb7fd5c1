"""Preference methods in the trainer: DPO, ORPO and KTO on the tiny model, from the same preference records.

Each run is the real trainer (``trainer.run.run``) with a local object store in tmp_path and the in-test gRPC
TrainerReporting service; the reference-model test looks inside TRL's DPOTrainer.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import ANSWERS, QUESTIONS, RUN_TOKEN, jsonl_bytes, make_spec, reporting_server
from trainer.metrics import RESULTS_HEADER
from trainer.reporter import Reporter
from trainer.run import StopSignal, run
from tunery.jobspec import JobSpec
from tunery.storage import open_store

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast

__all__ = ["reporting_server"]


def preference_examples(n: int) -> list[dict[str, Any]]:
    """An easy preference set in OpenAI's format: the robot answer is preferred over a shrug."""
    return [
        {
            "input": {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]},
            "preferred_output": [
                {"role": "assistant", "content": f"BEEP BOOP: {ANSWERS[i % len(ANSWERS)]} END OF LINE."}
            ],
            "non_preferred_output": [{"role": "assistant", "content": "Sorry, I do not know that one."}],
        }
        for i in range(n)
    ]


def preference_spec(tmp_path: Path, tiny_model_dir: Path, address: str, method: str, **kw: Any) -> JobSpec:
    root = tmp_path / "objects"
    store = open_store(str(root))
    store.put_bytes("files/file-train", jsonl_bytes(preference_examples(kw.pop("n_examples", 8))))
    if kw.get("validation_key"):
        store.put_bytes(kw["validation_key"], jsonl_bytes(preference_examples(4)))
    spec = make_spec(base_model_path=tiny_model_dir, object_store=root, reporting_address=address, **kw)
    return spec.model_copy(update={"plan": spec.plan.model_copy(update={"method": method, "beta": 0.1})})


def run_spec(spec: JobSpec) -> Any:
    reporter = Reporter(spec.reporting_address, spec.job_id, RUN_TOKEN)
    try:
        return run(spec, reporter, StopSignal())
    finally:
        reporter.close(timeout=10)


def metric_series(servicer: Any) -> list[Any]:
    return [m.metrics for m in servicer.of("Metrics")]


def test_dpo_run_learns_the_preference_and_reports_like_sft(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    servicer, address = reporting_server
    spec = preference_spec(
        tmp_path, tiny_model_dir, address, "dpo", n_epochs=3, batch_size=4, learning_rate=5e-3, max_seq_length=128
    )
    result = run_spec(spec)
    total = 3 * math.ceil(8 / 4)
    assert result.total_steps == total and result.train_examples == 8

    (started,) = servicer.of("Started")
    assert started.total_steps == total and started.train_examples == 8
    assert json.loads(started.hyperparameters_json)["beta"] == pytest.approx(0.1)
    metrics = metric_series(servicer)
    assert [m.step for m in metrics] == list(range(1, total + 1))
    for m in metrics:
        assert math.isfinite(m.train_loss)
        assert {"rewards_accuracies", "rewards_margins", "rewards_chosen", "rewards_rejected"} <= set(m.method_metrics)
    # Step 1 runs with the adapter still zero: policy == reference, so DPO's loss is log(2) and the margin 0.
    assert metrics[0].train_loss == pytest.approx(math.log(2), abs=1e-3)
    assert metrics[0].method_metrics["rewards_margins"] == pytest.approx(0.0, abs=1e-3)
    # It learns the easy preference: the loss goes down, the margin and the reward accuracy go up.
    assert metrics[-1].train_loss < metrics[0].train_loss - 0.05
    assert metrics[-1].method_metrics["rewards_margins"] > 0.05
    assert metrics[-1].method_metrics["rewards_accuracies"] == pytest.approx(1.0)

    # Checkpoints (one per epoch) and the final model carry a manifest naming the method.
    store = open_store(spec.object_store)
    checkpoints = servicer.of("Checkpoint")
    assert [c.step for c in checkpoints] == [2, 4, 6]
    manifest = json.loads(store.get_bytes(f"{result.model_prefix}/tunery_manifest.json"))
    assert manifest["method"] == "dpo" and manifest["preference"]["beta"] == pytest.approx(0.1)
    assert manifest["preference"]["reference_model"] == "base model, adapter disabled"
    assert f"{result.model_prefix}/adapter_model.safetensors" in set(store.list(result.model_prefix + "/"))

    rows = list(csv.reader(io.StringIO(store.get_bytes(result.results_key).decode())))
    assert rows[0][: len(RESULTS_HEADER)] == RESULTS_HEADER and "rewards_margins" in rows[0]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, total + 1))


def test_dpo_reference_is_the_base_model_with_the_adapter_disabled(tmp_path: Path, tiny_model_dir: Path) -> None:
    """TRL gets ``ref_model=None`` and a LoRA config: no second model, no "ref" adapter, and the reference
    log-probs it computes after training equal those of a freshly loaded base model (and differ from the policy's)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trainer.config import trl_config
    from trainer.loading import DeviceChoice, load_base_model, lora_config
    from trainer.methods import Datasets, get_method
    from trainer.methods.preference import paired_rows
    from tunery.data import PreferenceRecord
    from tunery.data_jsonl import parse_jsonl

    spec = preference_spec(tmp_path, tiny_model_dir, "127.0.0.1:1", "dpo", n_epochs=2, batch_size=2, learning_rate=1e-2)
    choice = DeviceChoice("cpu", torch.float32, False)
    model, tokenizer = load_base_model(str(tiny_model_dir), choice)
    records = [r for r in parse_jsonl([jsonl_bytes(preference_examples(4))]).records if isinstance(r, PreferenceRecord)]
    dpo = get_method("dpo")
    args = trl_config(dpo, spec.plan, seed=spec.seed, output_dir=str(tmp_path / "out"), choice=choice)
    datasets = Datasets(Dataset.from_list(paired_rows(records)), None, len(records))
    trainer = dpo.build_trainer(model, tokenizer, args, lora_config(spec.plan), datasets)
    assert trainer.ref_model is None
    assert list(trainer.model.peft_config) == ["default"]  # no "ref" copy of the adapter
    assert not any(".ref." in name for name, _ in trainer.model.named_parameters())
    trainer.train()

    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True, dtype=torch.float32)
    base.eval()
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    base_logps = (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)
    base_chosen, base_rejected = base_logps.chunk(2)
    torch.testing.assert_close(ref_chosen, base_chosen, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ref_rejected, base_rejected, rtol=1e-4, atol=1e-3)

    # The policy (adapter enabled) has moved away from that reference.
    with torch.no_grad():
        policy_logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    policy_tokens = torch.log_softmax(policy_logits[:, :-1].float(), dim=-1).gather(
        -1, batch["input_ids"][:, 1:, None]
    )[..., 0]
    policy_logps = (policy_tokens * batch["completion_mask"][:, 1:]).sum(dim=1)
    assert (policy_logps - base_logps).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_orpo_and_kto_train_from_the_same_preference_records(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any, method: str
) -> None:
    servicer, address = reporting_server
    spec = preference_spec(
        tmp_path,
        tiny_model_dir,
        address,
        method,
        n_epochs=2,
        batch_size=2,
        learning_rate=5e-3,
        max_seq_length=128,
        validation_key="files/file-valid",
    )
    result = run_spec(spec)
    total = 2 * math.ceil(8 / 2)  # batch_size counts pairs, for KTO too (two rows each)
    assert result.total_steps == total and result.train_examples == 8
    metrics = metric_series(servicer)
    assert [m.step for m in metrics] == list(range(1, total + 1))
    assert all(math.isfinite(m.train_loss) for m in metrics)
    assert all("rewards_chosen" in m.method_metrics for m in metrics)
    if method == "kto":
        assert all("kl" in m.method_metrics for m in metrics)
    else:
        assert all("nll_loss" in m.method_metrics for m in metrics)
    # The validation pairs are evaluated at the end of each epoch.
    assert [m.step for m in metrics if m.HasField("valid_loss")] == [total // 2, total]
    assert metrics[-1].train_loss < metrics[0].train_loss
    store = open_store(spec.object_store)
    manifest = json.loads(store.get_bytes(f"{result.model_prefix}/tunery_manifest.json"))
    assert manifest["method"] == method
    assert [c.step for c in servicer.of("Checkpoint")] == [total // 2, total]


def test_long_pairs_are_dropped_when_asked(tmp_path: Path, tiny_model_dir: Path, reporting_server: Any) -> None:
    """``tunery.data.long_examples = "drop"`` on a preference job: pairs whose longer side is over max_seq_length
    (counted as validation counts them) are left out, with an event, instead of being cut."""
    from transformers import AutoTokenizer

    from trainer.chat import ChatTokenizer
    from trainer.methods.preference import pair_lengths
    from tunery.data import PreferenceRecord
    from tunery.data_jsonl import parse_jsonl
    from tunery.filescan import ScanOptions, scan_path
    from tunery.jobspec import DataOptions

    servicer, address = reporting_server
    long_reply = " ".join(f"word{i}" for i in range(200))
    examples = preference_examples(8)
    for i in (1, 4, 6):  # a long rejected reply: the pair's longer side is over the limit
        examples[i]["non_preferred_output"][0]["content"] = long_reply
    data = jsonl_bytes(examples)
    spec = preference_spec(
        tmp_path, tiny_model_dir, address, "dpo", n_epochs=1, batch_size=2, learning_rate=5e-3, max_seq_length=96
    )
    open_store(spec.object_store).put_bytes(spec.training_file.key, data)
    spec = spec.model_copy(update={"data": DataOptions(long_examples="drop")})

    # The trainer counts a pair as the validation report does: its longer side with the chat template.
    (tmp_path / "pairs.jsonl").write_bytes(data)
    scan = scan_path(tmp_path / "pairs.jsonl", ScanOptions(model_folder=str(tiny_model_dir), model_name="tiny"))
    records = [r for r in parse_jsonl([data]).records if isinstance(r, PreferenceRecord)]
    lengths = pair_lengths(records, ChatTokenizer(AutoTokenizer.from_pretrained(str(tiny_model_dir))))
    assert lengths == list(scan.tokens)
    assert [i for i, n in enumerate(lengths) if n > 96] == [1, 4, 6]

    result = run_spec(spec)
    assert result.train_examples == 5 and result.total_steps == 3
    [event] = [e for e in servicer.of("Event") if "longer than max_seq_length" in e.message]
    assert json.loads(event.data_json) == {"long_dropped": 3, "examples": 5}


def test_kto_rows_are_derived_from_pairs() -> None:
    from trainer.methods.preference import kto_rows
    from tunery.data import PreferenceRecord
    from tunery.data_jsonl import parse_jsonl

    records = [r for r in parse_jsonl([jsonl_bytes(preference_examples(3))]).records if isinstance(r, PreferenceRecord)]
    rows = kto_rows(records, seed=1, shuffle=False)
    assert [row["label"] for row in rows] == [True, False] * 3
    assert rows[0]["prompt"] == rows[1]["prompt"] == [{"role": "user", "content": QUESTIONS[0]}]
    assert rows[0]["completion"][0]["content"].startswith("BEEP BOOP")
    assert rows[1]["completion"][0]["content"] == "Sorry, I do not know that one."
    shuffled = kto_rows(records, seed=1)
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, shuffled)) == sorted(map(key, rows))
    assert kto_rows(records, seed=1) == shuffled  # the job's seed fixes the order
