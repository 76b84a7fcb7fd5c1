"""Reinforcement fine-tuning with its answers sampled by a real vLLM colocated with the trainer
(trainer/generation.py): vLLM's CPU build (``make vllm``, whose environment also has the trainer's TRL and PEFT) runs
the trainer, the engine in its own process, the policy's weights replaced in it after every step.

On a GPU the same code runs with vLLM's CUDA build (``TUNERY_TRAINER_GENERATION=auto`` picks it there); this
machine has none, so the engine here is the CPU build's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import RUN_TOKEN, keyword_task_spec, reporting_server
from tests.vllm_server import VLLM_VENV, vllm_python
from tunery.jobspec import RUN_TOKEN_ENV, JobSpec
from tunery.storage import open_store

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

__all__ = ["reporting_server"]

REPO = Path(__file__).resolve().parents[2]
SPEC_KEY = "jobs/ftjob-test/spec.json"


def trainer_python() -> str:
    python = vllm_python()
    if not (VLLM_VENV / ".tunery-trainer").is_file():
        reason = f"the vLLM environment at {VLLM_VENV} has no trainer libraries (run `make vllm`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def run_trainer(python: str, spec: JobSpec, root: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m trainer`` (or ``python`` with ``argv``) in the vLLM environment on ``spec``, stored under
    ``root``; ``env`` added to the trainer's environment."""
    open_store(str(root)).put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    return subprocess.run(
        [python, *(argv or ("-m", "trainer")), "--spec", f"{root.resolve().as_uri()}#{SPEC_KEY}"],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            RUN_TOKEN_ENV: RUN_TOKEN,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_vllm_samples_the_answers_of_a_model_that_learns_its_graders_task(
    tmp_path: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    """A task only its grader defines (say "word" when asked to greet in one word, as the demo model does in about
    a fifth of its answers), its answers sampled by vLLM: the mean reward rises, so the engine samples from the
    policy as it learns, and vLLM's log-probabilities of what it sampled stay those of the policy, step after
    step."""
    python = trainer_python()
    servicer, address = reporting_server
    root = tmp_path / "objects"
    store = open_store(str(root))
    spec = keyword_task_spec(
        keyword="word",
        base_model_path=demo_model_dir,
        object_store=root,
        reporting_address=address,
        generation="vllm",
        device="cpu",
    )
    proc = run_trainer(python, spec, root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "vLLM samples this run's answers" in out, out[-3000:]

    metrics = {m.metrics.step: m.metrics.method_metrics for m in servicer.of("Metrics")}
    assert sorted(metrics) == list(range(1, 9))
    rewards = {step: m["reward"] for step, m in metrics.items()}
    first, last = (rewards[1] + rewards[2]) / 2, (rewards[7] + rewards[8]) / 2
    assert first <= 0.5 and last >= first + 0.4, rewards
    # vLLM's log-probabilities of its samples against the policy's: a gap near 0 at every step, the last ones too,
    # after the policy has moved (an engine left with the base's weights would drift from it).
    gaps = {step: m["sampling_logp_difference"] for step, m in metrics.items()}
    assert max(gaps.values()) < 0.2, gaps
    assert 0 < metrics[8]["completion_length"] <= 6
    (finished,) = servicer.of("Finished")
    assert finished.succeeded, finished
    manifest = json.loads(store.get_bytes(f"jobs/{spec.job_id}/model/tunery_manifest.json"))
    assert manifest["method"] == "grpo"


# vLLM's CPU build refuses to start with a KV cache larger than the machine's free memory: a real start failure, as a
# GPU's vLLM fails where its share of the memory does not fit.
UNSTARTABLE = {"VLLM_CPU_KVCACHE_SPACE": "100000"}
# ``auto`` picks vLLM only on a GPU (tunery.estimate.uses_vllm). This trainer process has it pick vLLM on the CPU too,
# the one change to the trainer, so the path a GPU takes when vLLM fails is taken here.
AUTO_PICKS_VLLM = (
    "-c",
    "import sys, trainer.generation as g; from trainer.__main__ import main;"
    "g.uses_vllm = lambda requested, gpu, installed=True: requested != 'transformers';"
    "sys.exit(main(sys.argv[1:]))",
)


def two_steps(spec: JobSpec) -> JobSpec:
    return spec.model_copy(update={"plan": spec.plan.model_copy(update={"n_epochs": 1})})


def test_a_run_under_auto_samples_with_generate_where_vllm_does_not_start(
    tmp_path: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    """vLLM fails to start inside the trainer's constructor: the run says so in a warning event, samples with
    ``generate`` from the base model loaded anew (the failed trainer had put its adapter's layers into the first
    copy) and trains to the end."""
    python = trainer_python()
    servicer, address = reporting_server
    root = tmp_path / "objects"
    spec = keyword_task_spec(
        keyword="word", base_model_path=demo_model_dir, object_store=root, reporting_address=address, device="cpu"
    )
    assert spec.generation == "auto"
    proc = run_trainer(python, two_steps(spec), root, *AUTO_PICKS_VLLM, **UNSTARTABLE)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    (warning,) = [e for e in servicer.of("Event") if "vLLM could not start" in e.message]
    assert warning.level == "warn" and "transformers' generate samples them instead" in warning.message, warning
    metrics = {m.metrics.step: m.metrics.method_metrics for m in servicer.of("Metrics")}
    assert sorted(metrics) == [1, 2]
    # vLLM's figure of its samples against the policy's is absent: generate sampled them
    assert all("sampling_logp_difference" not in m and m["completion_length"] > 0 for m in metrics.values()), metrics
    (finished,) = servicer.of("Finished")
    assert finished.succeeded, finished


def test_a_run_that_asks_for_vllm_by_name_ends_with_a_clear_error_where_it_does_not_start(
    tmp_path: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    """``TUNERY_TRAINER_GENERATION=vllm`` is the server's choice, not a preference: vLLM failing to start ends the run
    with ``unsupported_hardware`` and a message that says what failed and what ``auto`` would do (before, vLLM's
    ValueErrors were reported as the job's invalid hyperparameters)."""
    python = trainer_python()
    servicer, address = reporting_server
    root = tmp_path / "objects"
    spec = keyword_task_spec(
        keyword="word",
        base_model_path=demo_model_dir,
        object_store=root,
        reporting_address=address,
        generation="vllm",
        device="cpu",
    )
    proc = run_trainer(python, two_steps(spec), root, **UNSTARTABLE)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-6000:]
    assert "Available memory" in out  # vLLM's own reason, in the trainer's log
    (finished,) = servicer.of("Finished")
    assert not finished.succeeded and finished.error_code == "unsupported_hardware", finished
    assert finished.error_message.startswith("vLLM could not start to sample this run's answers"), finished
    assert "TUNERY_TRAINER_GENERATION=vllm" in finished.error_message
    assert not servicer.of("Metrics")
