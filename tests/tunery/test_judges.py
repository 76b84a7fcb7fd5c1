"""A score_model grader's judge, without a model: reading its reply as a score (OpenAI's score model answers a
float), the checks of its range and sampling parameters, and a judge that is not at hand. The judge itself, on the
serving engine and in the trainer: tests/api/test_graders_judge.py, tests/trainer/test_grpo_judge.py."""

from __future__ import annotations

import pytest

from tunery.graders import (
    GraderError,
    GraderNotRunnable,
    JudgeSampling,
    parse_grader,
    parse_score,
    run_grader,
    score_models,
    score_range,
)
from tunery.graders.objects import SamplingParams

JUDGE = {
    "type": "score_model",
    "name": "judge",
    "model": "m",
    "input": [{"role": "user", "content": "Rate {{sample.output_text}} against {{item.label}}"}],
}


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("0.8", 0.8),
        (" 1 \n", 1.0),
        ("0.75.", 0.75),
        ("-0.5", -0.5),
        ("1e-1", 0.1),
        ('{"result": 0.3, "steps": []}', 0.3),  # OpenAI's structured answer
        ('{"score": 2}', 2.0),
        ("Score: 0.8", 0.8),
        ("I give it .5!", 0.5),
        ("gpt4 says 0.2", 0.2),  # a digit inside a word is no number
        ("The number 7 is", 7.0),  # out of a range is the grader's to clamp
    ],
)
def test_a_reply_with_one_number_is_that_score(reply: str, score: float) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "no number"),
        ("\n\n\n", "no number"),
        ("excellent", "no number"),
        ("nan", "no number"),
        ("NaN", "not a finite score"),
        ("Infinity", "not a finite score"),
        ('{"result": "high"}', "no number"),
        ("8/10", "several numbers (8, 10)"),
        ("between 0 and 1", "several numbers"),
    ],
)
def test_a_reply_without_exactly_one_number_is_no_score(reply: str, why: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_score(reply)
    assert why in str(e.value)


def test_range_and_sampling_defaults_and_checks() -> None:
    grader = parse_grader(JUDGE)
    assert score_range(grader) == (0.0, 1.0)  # type: ignore[arg-type]
    assert score_range(parse_grader({**JUDGE, "range": [1, 5]})) == (1.0, 5.0)  # type: ignore[arg-type]
    greedy = JudgeSampling.of(None)
    assert greedy.greedy and greedy.seed is None and greedy.max_tokens == 128
    sampled = JudgeSampling.of(SamplingParams(temperature=0.7, seed=3, max_completions_tokens=16))
    assert not sampled.greedy and (sampled.temperature, sampled.seed, sampled.max_tokens) == (0.7, 3, 16)
    for bad, param in [
        ({"range": [1, 1]}, "grader.range"),
        ({"range": [3, 2]}, "grader.range"),
        ({"range": [0]}, "grader.range"),
        ({"sampling_params": {"top_p": 1.5}}, "grader.sampling_params.top_p"),
        ({"sampling_params": {"temperature": -1}}, "grader.sampling_params.temperature"),
        ({"sampling_params": {"max_completions_tokens": 0}}, "grader.sampling_params.max_completions_tokens"),
    ]:
        with pytest.raises(GraderError) as e:
            parse_grader({**JUDGE, **bad})
        assert e.value.param == param, bad


def test_the_judges_of_a_grader_and_a_judge_not_at_hand() -> None:
    multi = parse_grader(
        {"type": "multi", "name": "m", "graders": {"a": JUDGE, "b": {**JUDGE, "model": "n"}}, "calculate_output": "a+b"}
    )
    assert [(where, g.model) for where, g in score_models(multi)] == [
        ("grader.graders.a", "m"),
        ("grader.graders.b", "n"),
    ]
    with pytest.raises(GraderNotRunnable) as e:  # a caller without a judge (none given) cannot run one
        run_grader(multi, "x", {"label": "y"})
    assert e.value.param == "grader.graders.a.model"
