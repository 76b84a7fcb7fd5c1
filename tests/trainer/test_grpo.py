"""Reinforcement fine-tuning (OpenAI's ``reinforcement`` method, TRL's GRPOTrainer): a model learns a task that only
its grader defines, rewards come from the same grader code as ``graders/run``, and the figures reach the reports.

The method contract (every adapter, checkpoints, serving, pause and resume) is tests/trainer/test_methods.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import RUN_TOKEN, jsonl_bytes, make_spec, reporting_server
from trainer.methods.grpo import grader_reward, output_text
from trainer.reporter import Reporter
from trainer.run import StopSignal, run
from tunery import sandbox
from tunery.graders import parse_grader
from tunery.plan import ReinforcementPlan
from tunery.storage import open_store

__all__ = ["reporting_server"]

KEYWORD = {
    "type": "string_check",
    "name": "greeting",
    "input": "{{sample.output_text}}",
    "reference": "{{item.keyword}}",
    "operation": "ilike",
}


def test_the_reward_is_the_graders_score_of_each_completion_against_its_item() -> None:
    reward = grader_reward(parse_grader(KEYWORD))
    completions = [
        [{"role": "assistant", "content": "Well, HELLO there"}],
        [{"role": "assistant", "content": "Goodbye"}],
        "hello as plain text",
    ]
    items = [json.dumps({"keyword": "hello"}), json.dumps({"keyword": "hello"}), json.dumps({"keyword": "bye"})]
    assert reward(prompts=[None] * 3, completions=completions, item=items) == [1.0, 0.0, 0.0]
    # A field the item lacks is the grader's error flag, a reward of 0 (as graders/run answers), not a failure.
    assert reward(prompts=[None], completions=["hello"], item=[json.dumps({"other": 1})]) == [0.0]
    assert reward.__name__ == "grader"
    assert output_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"


@pytest.mark.integration
def test_a_model_learns_a_task_defined_only_by_its_grader(
    tmp_path: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    """The demo model rarely answers "Greet me in one word" with "hello"; a grader that rewards that word is all the
    job says, and the mean reward rises from its first steps to its last."""
    servicer, address = reporting_server
    lines = [{"messages": [{"role": "user", "content": "Greet me in one word."}], "keyword": "hello"}] * 8
    root = tmp_path / "objects"
    open_store(str(root)).put_bytes("files/file-train", jsonl_bytes(lines))
    spec = make_spec(
        base_model_path=demo_model_dir,
        object_store=root,
        reporting_address=address,
        n_epochs=4,
        batch_size=4,
        learning_rate=3e-3,
        max_seq_length=64,
        seed=3,
    )
    plan = spec.plan.model_copy(
        update={
            "method": "grpo",
            "precision": "fp32",
            "packing": False,
            "lr_scheduler_type": "constant",
            "reinforcement": ReinforcementPlan(
                grader=KEYWORD, num_generations=4, max_completion_length=6, kl_coef=0.0, temperature=1.0
            ),
        }
    )
    spec = spec.model_copy(update={"plan": plan, "base_model": "smollm2"})
    stop = StopSignal()
    reporter = Reporter(spec.reporting_address, spec.job_id, RUN_TOKEN, on_stop=stop.set)
    try:
        result = run(spec, reporter, stop)
    finally:
        reporter.close(timeout=10)

    assert result.total_steps == 8  # 8 prompts, 4 a step (each sampled 4 times), 4 epochs
    rewards = {m.metrics.step: m.metrics.method_metrics["reward"] for m in servicer.of("Metrics")}
    assert sorted(rewards) == list(range(1, 9))
    first, last = (rewards[1] + rewards[2]) / 2, (rewards[7] + rewards[8]) / 2
    assert first <= 0.5 and last >= first + 0.4, rewards
    metrics = servicer.of("Metrics")[-1].metrics.method_metrics
    assert {"reward_std", "completion_length"} <= set(metrics)
    assert 0 < metrics["completion_length"] <= 6
    # The tokens the model read: each prompt, rendered, once per completion, every epoch.
    assert result.trained_tokens == result.tokens_per_epoch * 4 > 0
    store = open_store(spec.object_store)
    manifest = json.loads(store.get_bytes(f"{result.model_prefix}/tunery_manifest.json"))
    assert manifest["method"] == "grpo" and manifest["reinforcement"]["grader"] == KEYWORD
    results = store.get_bytes(result.results_key).decode().splitlines()
    assert results[0].split(",")[-5:] == ["reward", "reward_std", "kl", "completion_length", "valid_reward"]


@pytest.mark.skipif(sandbox.unavailable() is not None, reason=f"no sandbox on this machine: {sandbox.unavailable()}")
def test_a_python_grader_scores_a_batch_of_completions_in_its_sandbox() -> None:
    source = "def grade(sample, item):\n    return len(sample['output_text']) / item['length']\n"
    reward = grader_reward(parse_grader({"type": "python", "name": "length", "source": source}))
    completions = [[{"role": "assistant", "content": "ab"}], [{"role": "assistant", "content": "abcd"}]]
    items = [json.dumps({"length": 4}), json.dumps({"length": 0})]
    # The second divides by zero: a reward of 0 (python_grader_runtime_error), not a failed step.
    assert reward(prompts=[None, None], completions=completions, item=items) == [0.5, 0.0]


def test_a_trainer_that_cannot_run_the_grader_fails_the_job_with_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API checked the grader where it runs; a trainer on a machine without a sandbox refuses the job at its start
    (unsupported_method, naming what is missing), instead of failing inside a training step."""
    from trainer.errors import TrainerError
    from trainer.methods import get_method

    monkeypatch.setattr(sandbox, "unavailable", lambda: "Landlock is not enabled")
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    plan = make_spec(base_model_path=Path("."), object_store=Path("."), reporting_address="x").plan.model_copy(
        update={
            "method": "grpo",
            "reinforcement": ReinforcementPlan(
                grader=grader, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0
            ),
        }
    )
    with pytest.raises(TrainerError) as e:
        get_method("grpo").trainer_extra(None, plan)
    assert e.value.code == "unsupported_method" and "Landlock is not enabled" in str(e.value)
