"""How the CPU cores of one machine are shared: among the trainers a local backend runs at once, and between them
and the embedded chat engine of the same server (``tunery serve``, the embedded mode).

torch takes every core by default, and OpenMP threads spin while they wait for each other: two processes that each
take every core run far slower than either alone. Measured on the 2 cores here with the demo model
(bench/trainer_vs_trl.py, bench/engine_beside_trainer.py):

* two trainers at once, 2 threads each: 112 real tokens/s together; 1 thread each: 246 (one alone: 157-202 with 2,
  94-111 with 1);
* a trainer training while the engine answers chats (greedy, one at a time), two runs: engine 2 + trainer 2 threads:
  3.9-4.1 output tokens/s and 24-35 real tokens/s; engine 1 + trainer 2: 12.0-12.2 and 45-51; engine 1 + trainer 1:
  **15.2-16.4 and 100-115**. The engine alone makes 15.1-15.9 with 2 threads or 1 (one answer at a time does not use
  a second core); the trainer alone 125-157 with 2, 111-112 with 1.

So each trainer gets its share of the cores (:func:`trainer_threads`), the engine the cores the running trainers
leave, at least 1, and while the engine answers (:attr:`CoreShare.busy_seconds` after it last asked) the trainers
give it a core where they would otherwise take them all: each trainer learns its count from the reporting service's
replies (``ReportReply.cpu_threads``) and applies it at its next step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

# The variables the math libraries read their thread count from: torch's intra-op pool (OpenMP), MKL, OpenBLAS.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def trainer_threads(configured: int, concurrent_runs: int, cores: int | None = None) -> int:
    """CPU threads of each trainer a local backend starts: as configured (TUNERY_TRAINER_THREADS), else the cores
    this process may use shared among the runs it starts at once, at least 1."""
    if configured > 0:
        return configured
    if cores is None:
        cores = usable_cores()
    return max(1, cores // max(1, concurrent_runs))


@dataclass(frozen=True)
class Split:
    """Who gets how many CPU threads now."""

    engine: int  # the embedded engine's
    trainer: int  # each running local trainer's


def split_cores(cores: int, each: int, running: int, engine_busy: bool) -> Split:
    """The one rule. ``each``: a trainer's threads (:func:`trainer_threads`); ``running``: the local trainers running
    now; ``engine_busy``: the engine is answering. The engine gets what the trainers leave, at least 1 (every core
    while none runs); a busy engine beside trainers that take every core gets 1, and they share the rest."""
    left = max(1, cores - running * each)
    if running and engine_busy and running * each + left > cores:
        return Split(engine=left, trainer=max(1, (cores - left) // running))
    return Split(engine=left, trainer=each)


class CoreShare:
    """The cores of an embedded server, shared between its local trainers and its chat engine (:func:`split_cores`).

    The engine asks :meth:`engine_threads` before every call into its model and at every token, which marks it busy
    for ``busy_seconds``; the reporting service answers each trainer's report with :meth:`trainer_threads_now`."""

    def __init__(
        self,
        cores: int,
        each: int,
        running: Callable[[], int],
        busy_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cores = cores
        self.each = each
        self.running = running
        self.busy_seconds = busy_seconds
        self._clock = clock
        self._asked: float | None = None  # when the engine last asked (one assignment: no lock needed)

    def engine_threads(self) -> int:
        self._asked = self._clock()
        return split_cores(self.cores, self.each, self.running(), engine_busy=True).engine

    def engine_busy(self) -> bool:
        asked = self._asked
        return asked is not None and self._clock() - asked < self.busy_seconds

    def trainer_threads_now(self) -> int:
        return split_cores(self.cores, self.each, self.running(), self.engine_busy()).trainer
