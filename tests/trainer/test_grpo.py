"""Reinforcement fine-tuning (OpenAI's ``reinforcement`` method, TRL's GRPOTrainer): a model learns a task that only
its grader defines, rewards come from the same grader code as ``graders/run``, and the figures reach the reports.

The method contract (every adapter, checkpoints, serving, pause and resume) is tests/trainer/test_methods.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import (
    RUN_TOKEN,
    as_grpo,
    jsonl_bytes,
    keyword_grader,
    keyword_task_spec,
    make_spec,
    reporting_server,
)
from trainer.checkpoint import MANIFEST
from trainer.methods import grpo
from trainer.methods.grpo import grader_reward, output_text
from trainer.reporter import Reporter
from trainer.run import StopSignal, run
from tunery import sandbox
from tunery.evalreport import REPORT_FILE, EvalGate, EvalOptions, EvalReport
from tunery.graders import parse_grader
from tunery.plan import ReinforcementPlan
from tunery.storage import open_store

__all__ = ["reporting_server"]

KEYWORD = keyword_grader()


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
    spec = keyword_task_spec(
        keyword="hello", base_model_path=demo_model_dir, object_store=tmp_path / "objects", reporting_address=address
    )
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


# A multi grader (its sub-graders' means in the report), with a pass threshold (the report's pass rate).
CLOSE_OR_EXACT = {
    "type": "multi",
    "name": "close_or_exact",
    "graders": {
        "close": {
            "type": "text_similarity",
            "name": "close",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "evaluation_metric": "fuzzy_match",
        },
        "exact": {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        },
    },
    "calculate_output": "0.5 * close + 0.5 * exact",
    "pass_threshold": 0.3,
}


def test_each_checkpoint_and_the_final_model_get_a_reward_report(
    tmp_path: Path, tiny_model_dir: Path, reporting_server: Any
) -> None:
    """A reinforcement job's eval report grades the base's and the model's answers to the validation prompts (greedy,
    and ``eval_samples`` seeded samples a prompt) with the job's grader, beside the forgetting check; the gate can ask
    for a reward improvement."""
    _, address = reporting_server
    train = [{"messages": [{"role": "user", "content": f"Say {w}."}], "answer": w} for w in ("yes", "no", "up", "on")]
    valid = [{"messages": [{"role": "user", "content": f"Repeat {w}."}], "answer": w} for w in ("a", "b", "c")]
    root = tmp_path / "objects"
    store = open_store(str(root))
    store.put_bytes("files/file-train", jsonl_bytes(train))
    store.put_bytes("files/file-valid", jsonl_bytes(valid))
    spec = make_spec(
        base_model_path=tiny_model_dir,
        object_store=root,
        reporting_address=address,
        validation_key="files/file-valid",
        n_epochs=1,
        batch_size=2,
        learning_rate=5e-3,
        max_seq_length=64,
    )
    rl = ReinforcementPlan(
        grader=CLOSE_OR_EXACT, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0, eval_samples=2
    )
    options = EvalOptions(samples=2, gate=EvalGate(min_reward_improvement=-1.0))
    spec = as_grpo(spec, rl).model_copy(update={"eval": options})
    stop = StopSignal()
    reporter = Reporter(spec.reporting_address, spec.job_id, RUN_TOKEN, on_stop=stop.set)
    try:
        result = run(spec, reporter, stop)
    finally:
        reporter.close(timeout=10)

    assert result.total_steps == 2 and result.checkpoints
    reports = []
    for prefix in [*result.checkpoints, result.model_prefix]:
        report = EvalReport.model_validate_json(store.get_bytes(f"{prefix}/{REPORT_FILE}"))
        manifest = json.loads(store.get_bytes(f"{prefix}/{MANIFEST}"))
        rw = report.reward
        assert rw is not None and report.validation is None and report.forgetting is not None
        assert manifest["eval_report"]["reward"] == pytest.approx(rw.greedy.model.mean)
        assert (rw.prompts, rw.prompts_from, rw.eval_samples, rw.pass_threshold) == (3, "validation_file", 2, 0.3)
        assert rw.grader == "close_or_exact (multi)" and rw.max_completion_length == 4
        for c, answers in ((rw.greedy, 3), (rw.sampled, 6)):
            assert c is not None
            for f in (c.base, c.model):
                assert f.answers == answers and f.prompts == 3 and 0.0 <= f.mean <= 1.0 and f.std >= 0
                assert f.pass_rate is not None and set(f.per_grader) == {"close", "exact"}
                assert f.mean == pytest.approx(0.5 * f.per_grader["close"] + 0.5 * f.per_grader["exact"])
            assert c.change == pytest.approx(c.model.mean - c.base.mean)
        assert len(rw.samples) == 2 and {s.line for s in rw.samples} <= {1, 2, 3}
        assert all(s.prompt.startswith("Repeat") for s in rw.samples)
        assert report.gate is not None and report.gate.passed
        assert report.gate.checks[0].name == "min_reward_improvement"
        assert any("reinforcement prompts have no answer" in m for m in report.missing)
        reports.append(report)
    # The base side is measured once (greedy and seeded samples alike): every report shows the same.
    first = reports[0].reward
    assert first is not None and first.sampled is not None
    for r in reports[1:]:
        assert r.reward is not None and r.reward.sampled is not None
        assert r.reward.greedy.base == first.greedy.base and r.reward.sampled.base == first.sampled.base
        assert [s.base for s in r.reward.samples] == [s.base for s in first.samples]


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


def test_a_lines_tools_are_rendered_into_the_prompt_the_policy_reads(tiny_model_dir: Path) -> None:
    """OpenAI's RFT lines may carry ``tools``: each prompt is rendered with its own line's tools (as a chat line's are),
    counted in its length, and a prompt without tools is rendered without any."""
    from transformers import AutoTokenizer

    from tunery.data import ReinforcementRecord
    from tunery.data_jsonl import parse_jsonl

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    # The tiny model's template (SmolLM2's) ignores tools; one that renders them, as many models' do.
    tok.chat_template = (
        "{% if tools %}Tools: {% for t in tools %}{{ t.function.name }} {% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:"
        "{% endif %}"
    )
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    lines = [
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [weather], "city": "Paris"},
        {"messages": [{"role": "user", "content": "Weather in Rome?"}], "city": "Rome"},
    ]
    parsed = parse_jsonl([jsonl_bytes(lines)])
    assert not parsed.errors
    records = [r for r in parsed.records if isinstance(r, ReinforcementRecord)]
    table = grpo.rows(records)
    assert json.loads(table[0]["item"]) == {"city": "Paris"} and table[1]["tools"] == ""
    assert grpo.row_tools(table[0]) == [weather] and grpo.row_tools(table[1]) is None
    with_tools = grpo.prompt_tokens(tok, table[0]["prompt"], grpo.row_tools(table[0]))
    assert with_tools > grpo.prompt_tokens(tok, table[0]["prompt"])

    trainer = object.__new__(grpo.tools_trainer_class())  # TRL's GRPOTrainer, its prompt tokenization only
    trainer.processing_class, trainer.chat_template, trainer.chat_template_kwargs = tok, None, {}
    trainer._row_tools = [grpo.row_tools(r) for r in table]
    ids, images, extra = trainer._tokenize_prompts([r["prompt"] for r in table])
    assert images is None and extra == {} and len(ids[0]) == with_tools
    first, second = (tok.decode(i) for i in ids)
    assert first.startswith("Tools: get_weather") and "user: Weather in Paris?" in first
    assert "Tools" not in second and second.endswith("assistant:")
