"""An eval report in the terminal (``tunery jobs report``): rich tables of what tunery/evalreport.py holds."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from tunery.evalreport import Comparison, EvalReport


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
    if r.gate is not None:
        t = Table(
            title=f"Gate: {'[green]passed[/green]' if r.gate.passed else '[red]failed[/red]'}", title_justify="left"
        )
        for col in ("check", "value", "limit", ""):
            t.add_column(col)
        for c in r.gate.checks:
            t.add_row(c.name, _pct(c.value), f"{c.limit:.1%}", "[green]pass[/green]" if c.passed else "[red]fail[/red]")
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
