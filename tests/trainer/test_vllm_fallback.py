"""A reinforcement run whose vLLM does not start (trainer/generation.py, ``vllm_start_failure``): under ``auto`` it
samples with ``generate`` instead; asked for by name, vLLM failing ends the run with a clear error. vLLM's CPU build
(``make vllm``) runs the trainer, as in tests/trainer/test_grpo_vllm.py; a file of its own so that the suite's
workers can run it beside that one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import keyword_task_spec, reporting_server
from tests.vllm_server import run_trainer, trainer_python

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

__all__ = ["reporting_server"]


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
        keyword="word",
        base_model_path=demo_model_dir,
        object_store=root,
        reporting_address=address,
        n_epochs=1,  # 2 steps
        device="cpu",
    )
    assert spec.generation == "auto"
    proc = run_trainer(python, spec, root, *AUTO_PICKS_VLLM, **UNSTARTABLE)
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
        n_epochs=1,
        generation="vllm",
        device="cpu",
    )
    proc = run_trainer(python, spec, root, **UNSTARTABLE)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-6000:]
    assert "Available memory" in out  # vLLM's own reason, in the trainer's log
    (finished,) = servicer.of("Finished")
    assert not finished.succeeded and finished.error_code == "unsupported_hardware", finished
    assert finished.error_message.startswith("vLLM could not start to sample this run's answers"), finished
    assert "TUNERY_TRAINER_GENERATION=vllm" in finished.error_message
    assert not servicer.of("Metrics")
