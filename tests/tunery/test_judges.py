"""A model grader's judge, without a model: reading its reply as a score (OpenAI's score model answers a float) or
as a label, the checks of a range, sampling parameters and labels, and a judge that is not at hand. The judge
itself, on the serving engine and in the trainer: tests/api/test_graders_judge.py, tests/trainer/test_grpo_judge.py."""

from __future__ import annotations

import pytest

from tunery.graders import (
    GraderError,
    GraderNotRunnable,
    JudgeSampling,
    model_graders,
    parse_grader,
    parse_label,
    parse_score,
    run_grader,
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
    assert [(where, g.model) for where, g in model_graders(multi)] == [
        ("grader.graders.a", "m"),
        ("grader.graders.b", "n"),
    ]
    with pytest.raises(GraderNotRunnable) as e:  # a caller without a judge (none given) cannot run one
        run_grader(multi, "x", {"label": "y"})
    assert e.value.param == "grader.graders.a.model"


LABELS = ["good", "bad", "very bad"]


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("good", "good"),
        (" Good.\n", "good"),
        ('{"result": "bad"}', "bad"),
        ('"very bad"', "very bad"),
        ("I think the answer is good.", "good"),
        ("Very bad, sadly", "very bad"),  # a label of several words
    ],
)
def test_a_reply_naming_one_label_is_that_label(reply: str, label: str) -> None:
    assert parse_label(reply, ["good", "very bad"] if "ery" in reply else LABELS) == label


@pytest.mark.parametrize(
    ("reply", "why"),
    [("", "none of the labels"), ("goodness", "none of the labels"), ("good or bad", "several labels")],
)
def test_a_reply_without_exactly_one_label_is_no_label(reply: str, why: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_label(reply, LABELS)
    assert why in str(e.value)


def test_labels_are_checked_and_a_label_model_needs_its_judge() -> None:
    labeller = {
        "type": "label_model",
        "name": "l",
        "model": "m",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
    }

    def multi(**extra: object) -> dict[str, object]:
        return {"type": "multi", "name": "m", "graders": {"l": {**labeller, **extra}}, "calculate_output": "l"}

    for bad, param in [
        ({"labels": []}, "labels"),
        ({"labels": ["good", "good"]}, "labels"),
        ({"passing_labels": []}, "passing_labels"),
        ({"passing_labels": ["great"]}, "passing_labels"),
    ]:
        with pytest.raises(GraderError) as e:
            parse_grader(multi(**bad))
        assert e.value.param == f"grader.graders.l.{param}", bad
    with pytest.raises(GraderNotRunnable) as n:
        run_grader(parse_grader(multi()), "x")
    assert n.value.param == "grader.graders.l.model"
