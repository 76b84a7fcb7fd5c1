"""The embedded engine's CPU threads, as many as it is given now (the embedded server's share of its cores with its
local trainers: scheduler.cores). torch keeps the count per calling thread (OpenMP's), so :meth:`ModelThreads.fit`
runs on the one thread that runs the model."""

from __future__ import annotations

from collections.abc import Callable


class ModelThreads:
    def __init__(self, cpu_threads: Callable[[], int] | None):
        """``cpu_threads``: how many the model may use now; None: torch's default, every core."""
        self._cpu_threads = cpu_threads
        self._set = 0  # what torch's threads were last set to; 0: not yet

    def fit(self) -> None:
        """On the model thread: set torch's intra-op threads to ``cpu_threads()`` where that changed."""
        if self._cpu_threads is None:
            return
        threads = max(1, self._cpu_threads())
        if threads != self._set:
            import torch

            torch.set_num_threads(threads)
            self._set = threads
