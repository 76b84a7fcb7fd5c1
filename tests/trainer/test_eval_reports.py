"""Eval reports written by the trainer (docs/evals.md): one per checkpoint and for the final model, next to its
manifest; the gate that promotes a passing checkpoint or fails the job; a report never half written.

The tiny random model has nothing to forget and learns the chat template's tokens fast: these tests check what a
report holds and when it is written; tests/e2e/test_eval_reports.py checks its figures on the demo model.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_run import SPEC_KEY, setup_job, start_trainer, wait
from tests.trainer_fixtures import chat_examples, jsonl_bytes, reporting_server
from trainer.checkpoint import MANIFEST
from trainer.errors import EXIT_FAILED
from tunery.evalreport import DEFAULT_REFERENCE, EVAL_GATE_FAILED, REPORT_FILE, EvalGate, EvalOptions, EvalReport
from tunery.jobspec import JobSpec

pytestmark = pytest.mark.integration

__all__ = ["reporting_server"]


def with_eval(store: Any, spec: JobSpec, options: EvalOptions) -> JobSpec:
    spec = spec.model_copy(update={"eval": options})
    store.put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    return spec


def report_at(store: Any, prefix: str) -> EvalReport:
    return EvalReport.model_validate_json(store.get_bytes(f"{prefix}/{REPORT_FILE}"))


def test_every_checkpoint_and_the_final_model_get_a_complete_report(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    servicer, address = reporting_server
    store, spec = setup_job(
        tmp_path,
        tiny_model_dir,
        address,
        jsonl_bytes(chat_examples(8)),
        validation_key="files/file-valid",
        n_epochs=2,
        batch_size=4,
        learning_rate=5e-3,
    )
    # precision full: measured in the model's own fp32, so the figures are the training's own to the last digit
    spec = with_eval(store, spec, EvalOptions(samples=2, max_new_tokens=8, precision="full"))
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == 0, out[-5000:]

    checkpoints = servicer.of("Checkpoint")
    assert [c.step for c in checkpoints] == [2, 4]
    reports = {}
    for c in checkpoints:
        manifest = json.loads(store.get_bytes(f"{c.object_prefix}/{MANIFEST}"))
        raw = store.get_bytes(f"{c.object_prefix}/{REPORT_FILE}")
        # Versioned with the checkpoint: listed in its manifest with its hash, summarized there.
        assert manifest["files"][REPORT_FILE] == hashlib.sha256(raw).hexdigest()
        report = EvalReport.model_validate_json(raw)
        reports[c.step] = report
        assert manifest["eval_report"]["file"] == REPORT_FILE
        assert manifest["eval_report"]["validation_loss"] == pytest.approx(report.validation.model.loss)
        assert report.model == f"{spec.fine_tuned_model}:ckpt-step-{c.step}" and report.step == c.step
        assert report.job_id == spec.job_id and report.baseline == "the base model"
        # Validation: the base and the model on the same 4 examples; the model's loss is the trainer's own.
        v = report.validation
        assert v.base.examples == v.model.examples == 4 and v.base.tokens == v.model.tokens > 0
        assert v.model.loss == pytest.approx(c.metrics.valid_loss, rel=1e-3)
        assert v.model.perplexity == pytest.approx(math.exp(v.model.loss))
        assert v.relative_change == pytest.approx((v.model.loss - v.base.loss) / v.base.loss)
        pct = report.validation_loss_percentiles["model"]
        assert pct.p10 <= pct.p50 <= pct.p90 <= pct.max
        assert [h.loss for h in report.hardest_examples] == sorted(
            (h.loss for h in report.hardest_examples), reverse=True
        )
        assert report.hardest_examples[0].loss == pytest.approx(pct.max)
        assert all(1 <= h.line <= 4 for h in report.hardest_examples)
        # Samples: the same seeded prompts every time, base against fine-tuned, greedy.
        assert len(report.samples) == 2 and report.samples_from == "validation_file"
        # Forgetting: Tunery's reference set, base against fine-tuned.
        f = report.forgetting
        assert f.reference == DEFAULT_REFERENCE and f.base.examples == 32
        assert f.flagged == (f.relative_change > f.threshold)
        assert report.preference is None and report.gate is None and report.missing == []
        assert report.provenance["seed"] == spec.seed
        assert (
            report.provenance["data_files"]["validation_file"]["sha256"]
            == hashlib.sha256(store.get_bytes("files/file-valid")).hexdigest()
        )
        assert {"torch", "transformers", "trl", "peft"} <= set(report.provenance["versions"])
        assert report.provenance["eval_dtype"] == "float32"
    # The base side does not move between reports; the model side does.
    assert reports[2].validation.base == reports[4].validation.base
    assert reports[2].samples[0].base == reports[4].samples[0].base
    assert [s.line for s in reports[2].samples] == [s.line for s in reports[4].samples]
    assert reports[2].validation.model.loss != reports[4].validation.model.loss
    # The final model is the last checkpoint's weights: the same figures, under the job's model name.
    final = report_at(store, f"jobs/{spec.job_id}/model")
    assert final.model == spec.fine_tuned_model
    assert final.validation == reports[4].validation and final.step == 4
    final_manifest = json.loads(store.get_bytes(f"jobs/{spec.job_id}/model/{MANIFEST}"))
    assert REPORT_FILE in final_manifest["files"]


def test_without_a_validation_file_the_report_says_what_is_missing(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    _, address = reporting_server
    store, spec = setup_job(tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(4)), n_epochs=1)
    spec = with_eval(store, spec, EvalOptions(samples=1, max_new_tokens=4))
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == 0, out[-5000:]
    report = report_at(store, f"jobs/{spec.job_id}/model")
    assert report.validation is None and report.validation_loss_percentiles is None
    assert report.training_loss is not None and report.forgetting is not None
    assert report.samples_from == "training_file" and len(report.samples) == 1
    assert any("no validation file" in m for m in report.missing)
    # precision auto: bf16 where this CPU runs it natively (the fp32 weights trained on unchanged)
    assert report.provenance["eval_dtype"] == ("bfloat16" if bf16_native() else "float32")


def bf16_native() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_a_gate_no_model_passes_fails_the_job_and_keeps_the_report(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    servicer, address = reporting_server
    store, spec = setup_job(
        tmp_path, tiny_model_dir, address, jsonl_bytes(chat_examples(4)), validation_key="files/file-valid", n_epochs=2
    )
    gate = EvalGate(min_validation_improvement=0.999)  # a 99.9% lower validation loss: never
    spec = with_eval(store, spec, EvalOptions(samples=0, gate=gate))
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == EXIT_FAILED, out[-5000:]
    (finished,) = servicer.of("Finished")
    assert not finished.succeeded and finished.error_code == EVAL_GATE_FAILED
    assert "eval gate" in finished.error_message and "99.9%" in finished.error_message
    # The checkpoints stay, each with its failing report; the final report is where the model would have been,
    # with no manifest: there is no model.
    for c in servicer.of("Checkpoint"):
        report = report_at(store, c.object_prefix)
        assert report.gate is not None and not report.gate.passed
        assert report.gate.checks[0].name == "min_validation_improvement"
    final = report_at(store, f"jobs/{spec.job_id}/model")
    assert final.gate is not None and not final.gate.passed
    assert not store.exists(f"jobs/{spec.job_id}/model/{MANIFEST}")


def test_a_gate_promotes_the_passing_checkpoint_with_the_lowest_validation_loss(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    servicer, address = reporting_server
    store, spec = setup_job(
        tmp_path,
        tiny_model_dir,
        address,
        jsonl_bytes(chat_examples(8)),
        validation_key="files/file-valid",
        n_epochs=3,
        batch_size=4,
        learning_rate=5e-3,
    )
    # Any improvement passes: every model that improves on the base passes; the lowest loss wins.
    spec = with_eval(store, spec, EvalOptions(samples=0, gate=EvalGate(min_validation_improvement=0.0)))
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc)
    assert proc.returncode == 0, out[-5000:]
    reports = {c.step: report_at(store, c.object_prefix) for c in servicer.of("Checkpoint")}
    passing = {s: r for s, r in reports.items() if r.gate and r.gate.passed}
    assert passing, {s: r.validation for s, r in reports.items()}
    best = min(passing, key=lambda s: (passing[s].validation.model.loss, -s))
    final_prefix = f"jobs/{spec.job_id}/model"
    manifest = json.loads(store.get_bytes(f"{final_prefix}/{MANIFEST}"))
    final = report_at(store, final_prefix)
    assert final.step == best and final.model == spec.fine_tuned_model
    assert (
        manifest["files"][REPORT_FILE] == hashlib.sha256(store.get_bytes(f"{final_prefix}/{REPORT_FILE}")).hexdigest()
    )

    # Promoting a checkpoint (what the gate does when one beats the final model) makes its weights the model's.
    from tests.trainer_fixtures import RUN_TOKEN
    from trainer.base import StopSignal, TrainingRun
    from trainer.methods import get_method
    from trainer.reporter import Reporter

    reporter = Reporter(address, spec.job_id, RUN_TOKEN)
    run = TrainingRun(spec, reporter, StopSignal(), get_method("supervised"), store)
    run.copy_checkpoint(reports[2], final_prefix)
    reporter.close()  # events go out on the reporter's own thread: send them before looking
    source = f"jobs/{spec.job_id}/checkpoints/step-2"
    manifest = json.loads(store.get_bytes(f"{final_prefix}/{MANIFEST}"))
    assert manifest["promoted_from"]["step"] == 2 and manifest["step"] == 2
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        data = store.get_bytes(f"{final_prefix}/{name}")
        assert data == store.get_bytes(f"{source}/{name}")
        assert manifest["files"][name] == hashlib.sha256(data).hexdigest()
    promoted = report_at(store, final_prefix)
    assert promoted.step == 2 and promoted.model == spec.fine_tuned_model
    assert promoted.validation == reports[2].validation
    assert manifest["eval_report"]["step"] == 2
    assert any("step 2" in e.message for e in servicer.of("Event"))


def test_a_crash_before_the_manifest_leaves_no_complete_report(tmp_path: Path) -> None:
    """The report goes before the manifest; a write that fails in between leaves a checkpoint without a manifest,
    which nothing reads (the trainer's own gate included)."""
    from trainer.checkpoint import upload_checkpoint
    from tunery.storage import LocalObjectStore

    class Crashing(LocalObjectStore):
        def put_bytes(self, key: str, data: bytes) -> tuple[int, str]:
            if key.endswith(MANIFEST):
                raise OSError("disk full")
            return super().put_bytes(key, data)

    class Model:
        def save_pretrained(self, folder: str, **kw: Any) -> None:
            Path(folder, "adapter_model.safetensors").write_bytes(b"weights")
            Path(folder, "adapter_config.json").write_text("{}")

    class Tokenizer:
        def save_pretrained(self, folder: str) -> None:
            Path(folder, "tokenizer.json").write_text("{}")

    store = Crashing(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        upload_checkpoint(
            store, "jobs/j/checkpoints/step-1", Model(), Tokenizer(), {}, "base", extra_files={REPORT_FILE: b"{}"}
        )
    assert store.exists(f"jobs/j/checkpoints/step-1/{REPORT_FILE}")
    assert not store.exists(f"jobs/j/checkpoints/step-1/{MANIFEST}")
