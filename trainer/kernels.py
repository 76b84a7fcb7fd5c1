"""Where the trainer departs from a library's default for speed: each a measured win that leaves what is computed
unchanged (bench/trainer_vs_trl.py measures them; tests/trainer/test_kernels.py checks that they change nothing).

TRL's trainers project the last hidden states through the LM head in tiles, without the full logits (its fused LM
head, ``trl.trainer.utils.add_fused_lm_head``). On CUDA and XPU it scores only the positions whose next token has a
label; elsewhere it scores every position and zeroes the unlabelled ones, so that accelerators that compile a graph
per shape (Neuron) see the same tile shapes on every batch. The CPU compiles nothing, so that choice only costs it:
a chat example's system prompt, user turns and template tokens have no label, and they are most of its tokens.
:func:`score_labelled_positions_only` makes a model's fused head score the labelled positions only on the CPU too:
the same log-probabilities, entropy and top-1 flags, scattered back to the same places. It applies to the model it
is given (the run's), not to every TRL model in the process.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from typing import Any

log = logging.getLogger("tunery.trainer")

_MARK = "_tunery_labelled_only"
# Set while a model given to score_labelled_positions_only runs its forward (in that thread only).
_LABELLED_ONLY = contextvars.ContextVar("tunery_labelled_only", default=False)


def _install_choice() -> bool:
    """Wrap TRL's choice of whether the fused head compacts (once per process): the CPU compacts too while a model of
    ours runs its forward. False, with a warning, when this TRL makes no such choice (a TRL upgrade that moves it
    then costs speed, not correctness)."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or not callable(decide):
        log.warning("TRL's fused LM head makes no compaction choice here; the CPU scores every position")
        return False
    if getattr(decide, _MARK, False):
        return True

    @functools.wraps(decide)
    def compact(device: Any) -> bool:
        return bool(decide(device)) or (device.type == "cpu" and _LABELLED_ONLY.get())

    setattr(compact, _MARK, True)
    trl_utils._use_triton = compact
    return True


def score_labelled_positions_only(model: Any) -> bool:
    """Make ``model``'s fused LM head (added by TRL's trainer: the base model under a PEFT wrapper) score only the
    labelled positions on the CPU as well. Idempotent; returns whether it applies."""
    fused = model.forward
    if getattr(fused, _MARK, False):
        return True
    if not _install_choice():
        return False

    @functools.wraps(fused)
    def forward(*args: Any, **kwargs: Any) -> Any:
        token = _LABELLED_ONLY.set(True)
        try:
            return fused(*args, **kwargs)
        finally:
            _LABELLED_ONLY.reset(token)

    setattr(forward, _MARK, True)
    model.forward = forward
    return True


def fused_head_model(trainer: Any) -> Any:
    """The model whose forward TRL's trainer gave the fused LM head: the base model under a PEFT wrapper."""
    model = trainer.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model
