r"""The embedded engine answering chats while a local trainer trains on the same cores: the engine's output tokens/s
and the trainer's real tokens/s, each alone and both together, for pairs of CPU thread counts.

    .venv/bin/python bench/engine_beside_trainer.py [--pairs 2:2,1:2,1:1] [--steps 8] [--max-tokens 32]
        [--seconds 30] [--rounds 1]

This is what ``tunery serve`` does on one box: its embedded engine (serving.engine.EmbeddedEngine, in the server's
process) answers a chat while a trainer it started (a child process) trains.

* The engine: ``EmbeddedEngine`` on the demo model (SmolLM2-135M-Instruct, fp32), greedy answers of up to
  ``--max-tokens`` tokens to one short chat, one after another (a user waiting on each answer), its CPU threads
  given by its ``cpu_threads`` (the embedded server's: ``scheduler.cores.CoreShare``). Its rate: the output
  tokens of the answers made inside the window / the time they took.
* The trainer: ``bench/trainer_vs_trl.py --only tunery --steps N --no-memory`` in its own process (the trainer's own
  path on the demo model, LoRA r=16, mixed-length chat, batch 4), with ``OMP_NUM_THREADS`` (and MKL's, OpenBLAS's)
  set as the local backend sets them (``scheduler.cores.trainer_threads``). Its rate: real tokens/s over steps
  2..N, as that benchmark prints it.
* ``--pairs E:T,...``: the engine's threads E beside a trainer's T. Each pair runs both together: the engine answers
  from the moment the trainer has built its model (its second header line) until it exits. Alone: the engine for
  ``--seconds`` at each E, the trainer at each T.

Prints a line per measurement, what the embedded server's rule gives each beside one trainer, idle and answering
(``scheduler.cores.split_cores``), then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.cores import THREAD_ENV, split_cores, usable_cores  # noqa: E402

CHAT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


@dataclass
class Answers:
    """The engine's answers: (start, end, output tokens) of each, for a rate over any window."""

    spans: list[tuple[float, float, int]] = field(default_factory=list)

    def rate(self, start: float, end: float) -> tuple[float, int]:
        inside = [(a, b, n) for a, b, n in self.spans if a >= start and b <= end]
        seconds = sum(b - a for a, b, _ in inside)
        return (sum(n for *_, n in inside) / seconds if seconds else 0.0), len(inside)


class Chats:
    """The engine answering one chat after another on its own thread, with ``threads`` CPU threads."""

    def __init__(self, model_dir: Path, threads: int, max_tokens: int):
        from serving.engine import EmbeddedEngine
        from serving.protocol import ModelRef
        from serving.sampling import SamplingParams
        from tunery.storage import open_store

        self._tmp = tempfile.TemporaryDirectory(prefix="engine-bench-")
        store = open_store(Path(self._tmp.name, "objects").as_uri())
        self.engine = EmbeddedEngine(store, Path(self._tmp.name, "cache"), device="cpu", cpu_threads=lambda: threads)
        self.ref = ModelRef(base_name="smollm2-135m-instruct", base_path=str(model_dir))
        self.params = SamplingParams(max_tokens=max_tokens, temperature=0)
        self.answers = Answers()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.engine.generate(self.ref, CHAT, self.params)  # loads the model and warms up

    def start(self) -> Chats:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chats", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            answer = self.engine.generate(self.ref, CHAT, self.params)
            self.answers.spans.append((started, time.perf_counter(), answer.completion_tokens))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        self.stop()
        self.engine.close()
        self._tmp.cleanup()


def train(threads: int, steps: int, on_start: Any = None) -> tuple[dict[str, Any], float, float]:
    """Run the trainer benchmark's Tunery trainer in a child process with ``threads`` CPU threads; returns its
    summary and the window (perf_counter) from its model being built to its exit."""
    env = {**os.environ, **{name: str(threads) for name in THREAD_ENV}, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "bench" / "trainer_vs_trl.py"), "--only", "tunery"]
    cmd += ["--steps", str(steps), "--no-memory"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    start, last = 0.0, ""
    for line in proc.stdout:
        if line.startswith("# device") and not start:  # the second header line: the trainer is about to train
            start = time.perf_counter()
            if on_start is not None:
                on_start()
        last = line
    end = time.perf_counter()
    if proc.wait() != 0 or not start:
        raise RuntimeError(f"the trainer benchmark failed (exit {proc.returncode}): {last.strip()}")
    return json.loads(last)["tunery"], start, end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="2:2,1:2,1:1", help="engine:trainer CPU threads, comma-separated")
    parser.add_argument("--steps", type=int, default=8, help="the trainer's optimizer steps")
    parser.add_argument("--max-tokens", type=int, default=32, help="each answer's max_tokens")
    parser.add_argument("--seconds", type=float, default=30.0, help="the engine alone, at each thread count")
    parser.add_argument("--rounds", type=int, default=1, help="measure every pair this many times, in turn")
    args = parser.parse_args()
    try:
        pairs = [tuple(int(x) for x in p.split(":")) for p in args.pairs.split(",")]
        if any(len(p) != 2 or min(p) < 1 for p in pairs):
            raise ValueError
    except ValueError:
        parser.error(f"--pairs: engine:trainer thread counts (at least 1), comma-separated, not {args.pairs!r}")

    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging

    configure_logging()
    model_dir = prepare_demo_model(Path.home() / ".cache" / "tunery" / "models" / "smollm2-135m-instruct")
    cores = usable_cores()
    engine_counts = sorted({e for e, _ in pairs}, reverse=True)
    trainer_counts = sorted({t for _, t in pairs}, reverse=True)
    print(
        f"# the embedded engine beside a local trainer: SmolLM2-135M-Instruct fp32 on {cores} cores, torch "
        f"{torch.__version__}; answers of up to {args.max_tokens} tokens (greedy), one at a time; the trainer "
        f"{args.steps} steps of bench/trainer_vs_trl.py --only tunery",
        flush=True,
    )
    chats = {e: Chats(model_dir, e, args.max_tokens) for e in engine_counts}
    results: dict[str, Any] = {"cores": cores, "engine_alone": {}, "trainer_alone": {}, "together": []}
    try:
        for e in engine_counts:
            c = chats[e]
            c.answers.spans.clear()
            start = time.perf_counter()
            c.start()
            time.sleep(args.seconds)
            c.stop()
            rate, n = c.answers.rate(start, time.perf_counter())
            results["engine_alone"][e] = round(rate, 1)
            print(f"engine alone, {e} threads: {rate:6.1f} output tokens/s ({n} answers)", flush=True)
        for t in trainer_counts:
            summary, *_ = train(t, args.steps)
            results["trainer_alone"][t] = summary["real_tokens_per_second"]
            print(f"trainer alone, {t} threads: {summary['real_tokens_per_second']:6.1f} real tokens/s", flush=True)
        for _ in range(args.rounds):
            for e, t in pairs:
                c = chats[e]
                c.answers.spans.clear()
                summary, start, end = train(t, args.steps, on_start=c.start)
                c.stop()
                rate, n = c.answers.rate(start, end)
                row = {"engine_threads": e, "trainer_threads": t, "engine": round(rate, 1)}
                row["trainer"] = summary["real_tokens_per_second"]
                row["engine_share"] = round(rate / results["engine_alone"][e], 2)
                row["trainer_share"] = round(row["trainer"] / results["trainer_alone"][t], 2)
                results["together"].append(row)
                print(
                    f"together, engine {e} threads + trainer {t}: engine {rate:6.1f} output tokens/s ({n} answers, "
                    f"{row['engine_share']:.0%} of alone), trainer {row['trainer']:6.1f} real tokens/s "
                    f"({row['trainer_share']:.0%} of alone)",
                    flush=True,
                )
    finally:
        for c in chats.values():
            c.close()
    each = trainer_counts[0]
    idle, busy = split_cores(cores, each, 1, engine_busy=False), split_cores(cores, each, 1, engine_busy=True)
    results["rule"] = {"trainer_threads": each, "idle": vars(idle), "answering": vars(busy)}
    print(
        f"# the embedded server's rule (scheduler.cores.split_cores), one trainer of {each} threads: engine "
        f"{idle.engine} + trainer {idle.trainer} while the engine is idle, {busy.engine} + {busy.trainer} while it "
        "answers"
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
