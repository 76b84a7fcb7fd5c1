"""Reinforcement fine-tuning whose rewards come from a ``score_model`` grader: the judge model loaded in the trainer
(trainer/judge.py) from what the JobSpec says (its base model's folder, an ``ft:`` judge's files in the object store),
never looked up by name. The API's judge (the serving backend) is tests/api/test_graders_judge.py's; the scheduler's
resolution of ``JobSpec.judges``, end to end, is tests/api/test_judge_jobs.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.serving_fixtures import make_adapter
from tests.trainer_fixtures import RUN_TOKEN, as_grpo, jsonl_bytes, make_spec, reporting_server
from trainer.judge import TransformersJudge
from trainer.reporter import Reporter
from trainer.run import StopSignal, run
from tunery.graders import JudgeSampling
from tunery.jobspec import JobSpec, JudgeSpec
from tunery.plan import ReinforcementPlan
from tunery.storage import open_store

__all__ = ["reporting_server"]

JUDGE_NAME = "the-judge"
HI = [{"role": "user", "content": "Say hi."}]


def judge_grader(text: str, low: float, high: float, max_tokens: int = 6) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": JUDGE_NAME,
        "input": [{"role": "user", "content": text}],
        "range": [low, high],
        "sampling_params": {"max_completions_tokens": max_tokens},
    }


def grpo_spec(tmp_path: Path, policy: Path, judge: JudgeSpec, grader: dict[str, Any], address: str) -> JobSpec:
    lines = [{"messages": [{"role": "user", "content": f"Question {i}?"}], "n": 0.75} for i in range(2)]
    root = tmp_path / "objects"
    open_store(str(root)).put_bytes("files/file-train", jsonl_bytes(lines))
    spec = make_spec(
        base_model_path=policy,
        object_store=root,
        reporting_address=address,
        n_epochs=1,
        batch_size=2,
        max_seq_length=64,
        seed=3,
    )
    rl = ReinforcementPlan(grader=grader, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0)
    return as_grpo(spec, rl).model_copy(update={"judges": {JUDGE_NAME: judge}})


def train(spec: JobSpec) -> Any:
    stop = StopSignal()
    reporter = Reporter(spec.reporting_address, spec.job_id, RUN_TOKEN, on_stop=stop.set)
    try:
        return run(spec, reporter, stop)
    finally:
        reporter.close(timeout=10)


@pytest.mark.integration
def test_rewards_come_from_a_judge_loaded_in_the_trainer(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    """The tiny random judge answers no number (blank lines, greedy): every reward is its range's minimum, 0.25, a
    figure only the score_model grader gives; the step's reward metrics report it."""
    servicer, address = reporting_server
    judge = JudgeSpec(model=JUDGE_NAME, base_model="tiny-llama", base_model_path=str(tiny_model_dir))
    grader = judge_grader("Rate this answer: {{sample.output_text}}", 0.25, 0.75)
    spec = grpo_spec(tmp_path, tiny_model_dir, judge, grader, address)
    result = train(spec)
    assert result.total_steps == 1
    manifest = json.loads(open_store(spec.object_store).get_bytes(f"{result.model_prefix}/tunery_manifest.json"))
    assert manifest["judges"] == {JUDGE_NAME: judge.model_dump()}  # what judged the rewards, recorded
    metrics = [m.metrics.method_metrics for m in servicer.of("Metrics")]
    assert metrics and all(m["reward"] == pytest.approx(0.25) and m["reward_std"] == 0 for m in metrics)


def test_a_fine_tuned_judge_is_loaded_from_the_object_store(tmp_path: Path, tiny_model_dir: Path) -> None:
    """An ft: judge's adapter (as a job stored it) is copied from the store and merged into its base model; its
    replies count the prompt's and the reply's tokens, and a seeded sampler answers the same twice."""
    store = open_store(str(tmp_path / "objects"))
    store.put_dir("jobs/ftjob-judge/model/", make_adapter(tiny_model_dir, tmp_path / "adapter", seed=5))
    spec = JudgeSpec(
        model="ft:tiny-llama:personal:judge:AbCd1234",
        base_model="tiny-llama",
        base_model_path=str(tiny_model_dir),
        adapter_prefix="jobs/ftjob-judge/model/",
    )
    import torch

    judge = TransformersJudge({spec.model: spec}, store, "cpu", torch.float32, str(tmp_path / "work"))
    conversations = [HI, [{"role": "user", "content": "Say hi, at length and twice."}]]
    greedy = judge.complete(spec.model, conversations, JudgeSampling(max_tokens=4))
    assert [r.error for r in greedy] == [None, None]
    assert greedy[0].prompt_tokens < greedy[1].prompt_tokens and all(0 < r.completion_tokens <= 4 for r in greedy)
    assert judge.complete(spec.model, conversations[:1], JudgeSampling(max_tokens=4))[0] == greedy[0]  # batch-free
    seeded = JudgeSampling(temperature=1.0, seed=11, max_tokens=4)
    assert judge.complete(spec.model, [HI], seeded) == judge.complete(spec.model, [HI], seeded)
    assert judge.complete("ft:other", [HI], seeded)[0].error is not None


@pytest.mark.slow
def test_the_demo_judge_reads_the_item_rendered_in_the_trainer(
    tmp_path: Path, tiny_model_dir: Path, demo_model_dir: Path, reporting_server: Any
) -> None:
    """SmolLM2-135M-Instruct, asked to repeat the line's number ("The number 0.75 is"), gives every sample 0.75."""
    servicer, address = reporting_server
    judge = JudgeSpec(model=JUDGE_NAME, base_model="smollm2", base_model_path=str(demo_model_dir))
    grader = judge_grader("Repeat this number and nothing else: {{item.n}}", 0, 1, max_tokens=8)
    train(grpo_spec(tmp_path, tiny_model_dir, judge, grader, address))
    metrics = [m.metrics.method_metrics for m in servicer.of("Metrics")]
    assert metrics and all(m["reward"] == pytest.approx(0.75) for m in metrics), metrics
