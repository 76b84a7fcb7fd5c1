"""Reinforcement fine-tuning with its answers sampled by a real vLLM colocated with the trainer
(trainer/generation.py): vLLM's CPU build (``make vllm``, whose environment also has the trainer's TRL and PEFT) runs
the trainer, the engine in its own process, the policy's weights replaced in it after every step.

On a GPU the same code runs with vLLM's CUDA build (``TUNERY_TRAINER_GENERATION=auto`` picks it there); this
machine has none, so the engine here is the CPU build's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import keyword_task_spec, reporting_server
from tests.vllm_server import run_trainer, trainer_python
from tunery.storage import open_store

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

__all__ = ["reporting_server"]


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
