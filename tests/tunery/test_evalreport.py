"""The eval report's rules (tunery/evalreport.py): the gate, and which model a gated job promotes."""

from __future__ import annotations

import math

import pytest

from tunery.evalreport import (
    Comparison,
    EvalGate,
    EvalOptions,
    EvalReport,
    Forgetting,
    LossFigures,
    Percentiles,
    ReportSummary,
    RewardComparison,
    RewardFigures,
    RewardReport,
    default_reference_lines,
    gate_result,
    promotion,
)


def report(step: int, valid: float | None, forgetting: float | None = None, gate: EvalGate | None = None) -> EvalReport:
    r = EvalReport(
        job_id="ftjob-1",
        model=f"ft:m:ckpt-step-{step}",
        step=step,
        epoch=1.0,
        base_model="m",
        baseline="the base model",
        created_at="2026-12-04T00:00:00Z",
    )
    if valid is not None:
        r.validation = Comparison.of(LossFigures.of(2.0 * 10, 10, 2), LossFigures.of(valid * 10, 10, 2))
    if forgetting is not None:
        c = Comparison.of(LossFigures.of(1.0 * 10, 10, 2), LossFigures.of((1 + forgetting) * 10, 10, 2))
        r.forgetting = Forgetting(**c.model_dump(), reference="tunery:reference-v1", threshold=0.1, flagged=False)
    if gate is not None:
        r.gate = gate_result(gate, r)
    return r


def test_loss_figures_and_comparison() -> None:
    base, model = LossFigures.of(30.0, 10, 3), LossFigures.of(15.0, 10, 3)
    assert base.loss == 3.0 and base.perplexity == pytest.approx(math.exp(3.0))
    c = Comparison.of(base, model)
    assert c.change == pytest.approx(-1.5) and c.relative_change == pytest.approx(-0.5)
    assert math.isnan(LossFigures.of(0.0, 0, 0).loss)


def test_percentiles_are_nearest_rank() -> None:
    p = Percentiles.of([float(i) for i in range(1, 101)])
    assert (p.p10, p.p50, p.p90, p.p99, p.max) == (10.0, 50.0, 90.0, 99.0, 100.0)
    assert Percentiles.of([3.0]).p10 == 3.0


def test_the_gate_checks_each_limit_it_sets() -> None:
    gate = EvalGate(min_validation_improvement=0.1, max_forgetting=0.05)
    ok = report(1, valid=1.7, forgetting=0.04, gate=gate)  # 15% lower, 4% forgetting
    assert (
        ok.gate
        and ok.gate.passed
        and [c.name for c in ok.gate.checks]
        == [
            "min_validation_improvement",
            "max_forgetting",
        ]
    )
    worse = report(1, valid=1.9, forgetting=0.04, gate=gate)  # only 5% lower
    assert worse.gate and not worse.gate.passed
    assert [c.passed for c in worse.gate.checks] == [False, True]
    assert "5.0% below" in worse.gate.checks[0].message
    forgot = report(1, valid=1.0, forgetting=0.2, gate=gate)
    assert forgot.gate and [c.passed for c in forgot.gate.checks] == [True, False]
    # A figure the report could not measure fails its check, saying why.
    blind = report(1, valid=None, forgetting=0.0, gate=gate)
    assert blind.gate and not blind.gate.passed and "no validation file" in blind.gate.checks[0].message
    assert gate_result(EvalGate(), blind).passed  # no limit: nothing to fail


def test_promotion_picks_the_passing_model_with_the_lowest_validation_loss() -> None:
    gate = EvalGate(min_validation_improvement=0.1)
    ckpts = [report(2, 1.5, gate=gate), report(4, 1.2, gate=gate), report(6, 1.95, gate=gate)]
    final = report(6, 1.95, gate=gate)  # fails: 2.5% lower
    assert promotion(final, ckpts) is ckpts[1]
    better_final = report(6, 1.1, gate=gate)
    assert promotion(better_final, ckpts) is better_final
    tie = report(4, 1.2, gate=gate)
    assert promotion(tie, ckpts) is tie  # the final model wins a tie
    assert promotion(report(6, 1.99, gate=gate), [report(2, 1.98, gate=gate)]) is None
    # Without a validation file: the latest passing model.
    forget_gate = EvalGate(max_forgetting=0.05)
    a, b = report(2, None, 0.01, forget_gate), report(4, None, 0.02, forget_gate)
    assert promotion(report(6, None, 0.3, forget_gate), [a, b]) is b


def test_options_refuse_unknown_fields_and_bad_limits() -> None:
    with pytest.raises(ValueError):
        EvalOptions.model_validate({"samples": 3, "smaples": 4})
    with pytest.raises(ValueError):
        EvalGate(min_validation_improvement=1.5)
    assert EvalOptions().enabled and EvalOptions().gate is None


def test_the_reference_set_ships_as_chat_examples() -> None:
    from tunery.data import load_json
    from tunery.data_parsers import parse_chat_line

    lines = default_reference_lines()
    assert len(lines) == 32
    records = [parse_chat_line(load_json(line), i) for i, line in enumerate(lines, 1)]
    assert all(r.messages[-1].role == "assistant" for r in records)


def rewarded(step: int, base: list[float], model: list[float], gate: EvalGate | None = None) -> EvalReport:
    r = report(step, valid=None)
    greedy = RewardComparison.of(RewardFigures.of(base, len(base), 1.0), RewardFigures.of(model, len(model), 1.0))
    r.reward = RewardReport(
        grader="keyword (string_check)",
        prompts_from="validation_file",
        prompts=len(base),
        max_completion_length=8,
        pass_threshold=1.0,
        greedy=greedy,
        eval_samples=1,
        temperature=1.0,
        seed=7,
    )
    if gate is not None:
        r.gate = gate_result(gate, r)
    return r


def test_reward_figures_give_mean_std_pass_rate_and_each_sub_graders_mean() -> None:
    f = RewardFigures.of(
        [1.0, 0.0, 0.5, 0.5], prompts=2, threshold=0.5, errors=1, sub_rewards=[{"a": 1.0}, {"a": 0.0}, {"a": 1.0}, {}]
    )
    assert (f.mean, f.std, f.answers, f.prompts, f.errors) == (0.5, pytest.approx(math.sqrt(0.125)), 4, 2, 1)
    assert f.pass_rate == 0.75 and f.per_grader == {"a": pytest.approx(2 / 3)}
    assert RewardFigures.of([0.3], prompts=1).pass_rate is None  # a grader with no pass threshold
    c = RewardComparison.of(RewardFigures.of([0.0, 0.5], 2), RewardFigures.of([1.0, 0.5], 2))
    assert c.change == pytest.approx(0.5)


def test_the_reward_gate_checks_the_greedy_reward_against_the_bases() -> None:
    gate = EvalGate(min_reward_improvement=0.25)
    up = rewarded(1, base=[0.0, 0.0, 1.0, 0.0], model=[1.0, 0.0, 1.0, 0.0], gate=gate)  # +0.25
    assert up.gate is not None and up.gate.passed and up.gate.checks[0].value == pytest.approx(0.25)
    flat = rewarded(2, base=[0.0, 1.0], model=[0.0, 1.0], gate=gate)
    assert flat.gate is not None and not flat.gate.passed
    # A report with no reward (a job that is no reinforcement job) fails the check and says why.
    none = report(3, valid=1.0, gate=gate)
    assert none.gate is not None and not none.gate.passed and "only a reinforcement job" in none.gate.checks[0].message
    assert EvalGate(min_reward_improvement=-0.1).min_reward_improvement == -0.1  # "no more than 0.1 worse"
    # Promotion: of the passing reinforcement models, the highest mean reward.
    best = rewarded(4, base=[0.0, 0.0], model=[1.0, 1.0], gate=gate)
    assert promotion(up, [best]) is best
    summary = best.summary("file-r")
    assert (summary.reward, summary.reward_change, summary.validation_loss) == (1.0, 1.0, None)


def test_reports_and_summaries_written_before_rewards_still_parse() -> None:
    old = report(1, valid=1.5).model_dump(exclude={"reward"})
    assert "reward" not in old and EvalReport.model_validate(old).reward is None
    stored = {
        "file_id": "file-1",
        "step": 2,
        "validation_loss": 1.0,
        "validation_change": -0.1,
        "forgetting_change": None,
        "forgetting_flagged": None,
        "gate_passed": None,
    }
    assert ReportSummary.model_validate(stored).reward is None
    assert EvalGate.model_validate({"max_forgetting": 0.1}).min_reward_improvement is None


def test_tunery_jobs_report_renders_the_rewards_section() -> None:
    from rich.console import Console

    from api.report_view import print_report
    from tunery.evalreport import RewardSample

    r = rewarded(2, base=[0.0, 1.0], model=[1.0, 1.0], gate=EvalGate(min_reward_improvement=0.25))
    assert r.reward is not None
    r.reward.sampled = RewardComparison.of(
        RewardFigures.of([0.0, 0.5, 1.0, 0.5], 2, sub_rewards=[{"close": 0.2}] * 4), RewardFigures.of([1.0] * 4, 2)
    )
    r.reward.eval_samples = 2
    r.reward.samples = [
        RewardSample(line=3, prompt="Greet me", base="Hi", base_reward=0.0, fine_tuned="hello", fine_tuned_reward=1.0)
    ]
    console = Console(record=True, width=160)
    print_report(r, console)
    text = console.export_text()
    assert "Rewards: keyword (string_check) on 2 validation prompts, greedy" in text
    assert "sampled, 2 per prompt" in text and "close 0.200" in text
    assert "+0.5000" in text and "50.0%" in text  # the change and the base's pass rate
    assert "Greet me" in text and "hello" in text
    assert "min_reward_improvement" in text and "+0.2500" in text
