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
