"""How a trainer run ends when it does not succeed.

A ``TrainerError`` carries an OpenAI-style error code (and the request field it is about), and becomes
``Finished(succeeded=False, error_code, error_message, error_param)``. ``RunStopped`` is not a failure: the
control plane asked the run to stop (cancel, SIGTERM), so the trainer exits without reporting success.
"""

from __future__ import annotations

# Exit codes of `python -m trainer`.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3  # the control plane replied cancel_requested (or rejected this run's token)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15)
# Paused (the control plane asked) or preempted (SIGTERM during training): the run wrote a resume state at the step
# it stopped at, and the scheduler continues it from there (see trainer/resume.py).
EXIT_PREEMPTED = 4


class TrainerError(Exception):
    """A failure the user can act on; the message is one human-readable line."""

    code = "training_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = one_line(message)
        if code is not None:
            self.code = code
        self.param = param


class RunStopped(BaseException):
    """The run stopped on request; ``reason`` is ``cancelled``, ``terminated``, ``paused`` or ``preempted``.

    A BaseException (like KeyboardInterrupt), so no library's ``except Exception`` swallows it.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def exit_code(self) -> int:
        if self.reason in ("paused", "preempted"):
            return EXIT_PREEMPTED
        return EXIT_TERMINATED if self.reason == "terminated" else EXIT_CANCELLED


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace so a message fits one line of an event."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


GRADIENT_CHECKPOINTING_PARAM = "tunery.training.gradient_checkpointing"
NUM_GENERATIONS_PARAM = "tunery.reinforcement.num_generations"


def out_of_memory(
    e: BaseException, step: int, checkpointing: bool, reinforcement: bool = False, sampler_share: float | None = None
) -> TrainerError | None:
    """The user's error for a run out of GPU memory at ``step`` (``code: out_of_memory``), naming what to change
    first: gradient checkpointing where the run had it off (``auto`` turns it on only where the memory estimate says
    so), else the batch's size or length; for a ``reinforcement`` run, the answers a step samples (each prompt's
    ``num_generations``, each up to ``max_completion_length`` tokens), and the share of the GPU a colocated vLLM holds
    to sample them (``sampler_share``). None for any other exception."""
    import torch

    if not isinstance(e, torch.OutOfMemoryError):
        return None
    first = (
        f"set {GRADIENT_CHECKPOINTING_PARAM} to true (this run recomputed no activations: its memory estimate said it "
        "fits without), or "
        if not checkpointing
        else ""
    )
    if reinforcement:
        held = f" (vLLM holds {sampler_share:.0%} of this GPU to sample them)" if sampler_share else ""
        smaller = (
            f"give a smaller batch_size (or more gradient_accumulation_steps), {NUM_GENERATIONS_PARAM} or "
            f"tunery.reinforcement.max_completion_length: a step trains batch_size x num_generations sampled "
            f"answers{held}"
        )
        then = NUM_GENERATIONS_PARAM
    else:
        smaller = "give a smaller batch_size (or more gradient_accumulation_steps) or max_seq_length"
        then = "tunery.training.gradient_accumulation_steps"
    return TrainerError(
        f"out of GPU memory at step {step}: {first}{smaller}. {e}",
        code="out_of_memory",
        param=GRADIENT_CHECKPOINTING_PARAM if not checkpointing else then,
    )
