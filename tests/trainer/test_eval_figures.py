"""What an eval report says about real fine-tunes of the demo model (SmolLM2-135M-Instruct, docs/evals.md): a job
that learns the demo's answer format shows a lower validation loss than the base; one overfitted on purpose (ten
times the learning rate, many epochs) forgets general knowledge, which the forgetting check flags and the gate
refuses."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_run import SPEC_KEY, start_trainer, wait
from tests.trainer_fixtures import make_spec, reporting_server
from trainer.errors import EXIT_FAILED
from tunery.evalreport import EVAL_GATE_FAILED, REPORT_FILE, EvalGate, EvalOptions, EvalReport
from tunery.storage import open_store

pytestmark = pytest.mark.integration

__all__ = ["reporting_server"]


def demo_job(tmp_path: Path, model_dir: Path, address: str, options: EvalOptions, **plan: Any) -> Any:
    lines = (resources.files("tunery") / "demo" / "train.jsonl").read_text().splitlines(keepends=True)
    store = open_store(str(tmp_path / "objects"))
    store.put_bytes("files/file-train", "".join(lines[:32]).encode())
    store.put_bytes("files/file-valid", "".join(lines[32:]).encode())
    n_checkpoints = plan.pop("n_checkpoints", None)
    spec = make_spec(
        base_model_path=model_dir,
        object_store=tmp_path / "objects",
        reporting_address=address,
        validation_key="files/file-valid",
        batch_size=4,
        **plan,
    )
    spec = spec.model_copy(
        update={"eval": options, "plan": spec.plan.model_copy(update={"n_checkpoints": n_checkpoints})}
    )
    store.put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    return store, spec


def test_a_fine_tune_that_learns_the_format_lowers_validation_loss(
    tmp_path: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    _, address = reporting_server
    store, spec = demo_job(
        tmp_path, demo_model_dir, address, EvalOptions(samples=2, max_new_tokens=24), n_epochs=1, learning_rate=1e-3
    )
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc, timeout=900)
    assert proc.returncode == 0, out[-5000:]
    report = EvalReport.model_validate_json(store.get_bytes(f"jobs/{spec.job_id}/model/{REPORT_FILE}"))
    v = report.validation
    assert v is not None and v.base.examples == 8
    assert v.relative_change < -0.2, v  # the demo format is learned: the held-out answers got much likelier
    assert v.model.perplexity < v.base.perplexity
    # The fine-tuned samples speak the format the data teaches; the base's do not.
    assert any("BEEP BOOP" in s.fine_tuned for s in report.samples), report.samples
    assert not any("BEEP BOOP" in s.base for s in report.samples)


def test_an_overfitted_fine_tune_is_flagged_and_refused_by_the_gate(
    tmp_path: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    servicer, address = reporting_server
    options = EvalOptions(samples=0, gate=EvalGate(max_forgetting=0.05))
    store, spec = demo_job(tmp_path, demo_model_dir, address, options, n_epochs=4, learning_rate=1e-2, n_checkpoints=2)
    proc = start_trainer(tmp_path / "objects")
    out = wait(proc, timeout=900)
    assert proc.returncode == EXIT_FAILED, out[-5000:]
    (finished,) = servicer.of("Finished")
    assert finished.error_code == EVAL_GATE_FAILED and "reference-set loss" in finished.error_message
    report = EvalReport.model_validate_json(store.get_bytes(f"jobs/{spec.job_id}/model/{REPORT_FILE}"))
    f = report.forgetting
    assert f is not None and f.flagged and f.relative_change > 0.1, f
    assert report.gate is not None and not report.gate.passed
    for c in servicer.of("Checkpoint"):  # kept, each with the report that refused it
        kept = EvalReport.model_validate_json(store.get_bytes(f"{c.object_prefix}/{REPORT_FILE}"))
        assert kept.forgetting is not None and kept.forgetting.relative_change > 0.05
