"""What several ``tunery`` commands draw in the terminal: a training file's validation report, a sparkline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The last ``width`` values as bars, lowest ``▁`` to highest ``█`` (a flat series is all ``▄``)."""
    shown = [v for v in values if v == v][-width:]  # NaN left out
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    if high == low:
        return BARS[3] * len(shown)
    top = len(BARS) - 1
    return "".join(BARS[round((v - low) / (high - low) * top)] for v in shown)


def print_validation(console: Console, report: dict[str, Any], name: str) -> None:
    """A validation report (``tunery data validate``, ``tunery files get``): its verdict and counts, token statistics,
    the invalid lines, the warnings."""
    from rich.table import Table

    ok = report["status"] == "processed"
    console.print(
        f"[bold]{name}[/]: [{'green' if ok else 'red'}]{'valid' if ok else 'invalid'}[/] - "
        f"{report['examples']} example(s), {report['messages']} message(s) in {report['lines']} line(s), "
        f"format {report['format']}"
    )
    tokens = report.get("tokens")
    if tokens:
        table = Table("", "min", "mean", "p50", "p95", "max", "total", title=f"Tokens ({tokens['model']})")
        for label, key, total in (
            ("per example", "per_example", tokens["total"]),
            ("trained", "trained_per_example", tokens["trained"]),
        ):
            st = tokens[key]
            table.add_row(label, *(str(st[k]) for k in ("min", "mean", "p50", "p95", "max")), str(total))
        console.print(table)
    errors = report.get("errors") or {"total": 0, "listed": []}
    if errors["total"]:
        table = Table("line", "field", "problem", title=f"{errors['total']} invalid line(s)")
        for e in errors["listed"]:
            table.add_row(str(e["line"]), e["field"] or "", e["message"])
        console.print(table)
    for w in report.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {w}")
