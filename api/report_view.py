"""An eval report in the terminal (``tunery jobs report``): rich tables of what tunery/evalreport.py holds."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from tunery.evalreport import Comparison, EvalReport, RewardComparison, RewardFigures, RewardReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _comparison(title: str, c: Comparison) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("", "loss", "perplexity", "examples", "tokens"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("base", f"{c.base.loss:.4f}", f"{c.base.perplexity:.2f}", str(c.base.examples), str(c.base.tokens))
    t.add_row("model", f"{c.model.loss:.4f}", f"{c.model.perplexity:.2f}", str(c.model.examples), str(c.model.tokens))
    t.add_row("change", f"{c.change:+.4f}", _pct(c.relative_change), "", "")
    return t


def _reward_row(t: Table, who: str, f: RewardFigures) -> None:
    t.add_row(
        who,
        f"{f.mean:.4f}",
        f"{f.std:.4f}",
        "-" if f.pass_rate is None else f"{f.pass_rate:.1%}",
        str(f.answers),
        str(f.errors),
        ", ".join(f"{k} {v:.3f}" for k, v in f.per_grader.items()),
    )


def _reward_table(title: str, c: RewardComparison) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("", "mean reward", "std", "pass rate", "answers", "errors", "per grader"):
        t.add_column(col, justify="left" if col in ("", "per grader") else "right")
    _reward_row(t, "base", c.base)
    _reward_row(t, "model", c.model)
    t.add_row("change", f"{c.change:+.4f}", "", "", "", "", "")
    return t


def _rewards(rw: RewardReport) -> list[object]:
    source = "validation" if rw.prompts_from == "validation_file" else "training (no validation file)"
    parts: list[object] = [
        _reward_table(f"Rewards: {rw.grader} on {rw.prompts} {source} prompts, greedy", rw.greedy),
    ]
    if rw.sampled is not None:
        parts.append(
            _reward_table(
                f"Rewards: sampled, {rw.eval_samples} per prompt (temperature {rw.temperature:g}, seed {rw.seed})",
                rw.sampled,
            )
        )
    if rw.samples:
        t = Table(title="Answers (greedy), base against fine-tuned", title_justify="left", show_lines=True)
        for col in ("line", "prompt", "base", "reward", "fine-tuned", "reward"):
            t.add_column(col, overflow="fold")
        for s in rw.samples:
            t.add_row(str(s.line), s.prompt, s.base, f"{s.base_reward:.3f}", s.fine_tuned, f"{s.fine_tuned_reward:.3f}")
        parts.append(t)
    return parts


def _limit(name: str, limit: float) -> str:
    return f"{limit:+.4f}" if name == "min_reward_improvement" else f"{limit:.1%}"


def _value(name: str, value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}" if name == "min_reward_improvement" else _pct(value)


def report_renderable(r: EvalReport) -> Group:
    parts: list[object] = []
    # A job's report is of its own step; an evaluation's (docs/evals.md) of the model's step, on the file it names.
    of = f"evaluation {r.job_id} on {r.evaluated_file}" if r.evaluated_file else r.job_id
    head = f"[bold]{r.model}[/bold]\nstep {r.step} (epoch {r.epoch:g}), {of}; base: {r.baseline} ({r.base_model})"
    if r.training_loss is not None:
        head += f"\nlast training loss {r.training_loss:.4f}"
    parts.append(Panel(head, title="eval report", title_align="left"))
    if r.validation is not None:
        parts.append(_comparison("Validation", r.validation))
    if r.validation_loss_percentiles:
        t = Table(title="Per-example validation loss", title_justify="left")
        t.add_column("")
        names = ("p10", "p25", "p50", "p75", "p90", "p99", "max")
        for n in names:
            t.add_column(n, justify="right")
        for who, pct in r.validation_loss_percentiles.items():
            t.add_row(who, *(f"{getattr(pct, n):.3f}" for n in names))
        parts.append(t)
    if r.forgetting is not None:
        f = r.forgetting
        flag = "[red]FLAGGED[/red]" if f.flagged else "[green]ok[/green]"
        parts.append(_comparison(f"Forgetting on {f.reference}: {flag} (threshold {f.threshold:+.0%})", f))
    if r.preference is not None:
        pf = r.preference
        parts.append(
            f"Preference ({pf.pairs} validation pairs, beta {pf.beta:g}): reward accuracy {pf.reward_accuracy:.1%}, "
            f"margin {pf.reward_margin:+.3f} (chosen {pf.chosen_reward:+.3f}, rejected {pf.rejected_reward:+.3f})"
        )
    if r.reward is not None:
        parts.extend(_rewards(r.reward))
    if r.gate is not None:
        t = Table(
            title=f"Gate: {'[green]passed[/green]' if r.gate.passed else '[red]failed[/red]'}", title_justify="left"
        )
        for col in ("check", "value", "limit", ""):
            t.add_column(col)
        for c in r.gate.checks:
            verdict = "[green]pass[/green]" if c.passed else "[red]fail[/red]"
            t.add_row(c.name, _value(c.name, c.value), _limit(c.name, c.limit), verdict)
        parts.append(t)
    if r.samples:
        t = Table(title=f"Samples (greedy, from the {r.samples_from})", title_justify="left", show_lines=True)
        for col in ("line", "prompt", "expected", "base", "fine-tuned"):
            t.add_column(col, overflow="fold")
        for s in r.samples:
            t.add_row(str(s.line), s.prompt, s.expected, s.base, s.fine_tuned)
        parts.append(t)
    if r.hardest_examples:
        t = Table(title="Hardest validation examples", title_justify="left")
        for col in ("line", "loss", "base loss", "example"):
            t.add_column(col, overflow="fold")
        for h in r.hardest_examples:
            t.add_row(str(h.line), f"{h.loss:.3f}", f"{h.base_loss:.3f}", h.text)
        parts.append(t)
    for m in r.missing:
        parts.append(f"[yellow]not measured:[/yellow] {m}")
    parts.append(f"[dim]written {r.created_at} in {r.seconds:.1f}s[/dim]")
    return Group(*parts)  # type: ignore[arg-type]


def print_report(r: EvalReport, console: Console | None = None) -> None:
    (console or Console()).print(report_renderable(r))
