"""Per-step metrics: the rows of ``results.csv`` and the callback inside TRL's training loop that reports them,
evaluates and checkpoints at the planned steps, and stops at step boundaries."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from .base import TrainingRun

log = logging.getLogger("tunery.trainer")

RESULTS_HEADER = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


@dataclass
class StepRow:
    step: int
    epoch: float
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    peak_memory_gib: float | None = None  # the run's peak so far (peak_memory_gib below)
    tokens: int | None = None  # non-padding tokens in this step's batch
    seconds: float | None = None  # wall time of this optimizer step
    extra: dict[str, float] = field(default_factory=dict)  # the method's own figures (TrainerMethod.metrics)

    def to_proto(self, pb: Any, total_steps: int) -> Any:
        optional = {
            k: float(v)
            for k, v in asdict(self).items()
            if k not in ("step", "epoch", "tokens", "seconds", "extra") and v is not None
        }
        return pb.StepMetrics(
            step=self.step, total_steps=total_steps, epoch=float(self.epoch), method_metrics=self.extra, **optional
        )

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def peak_memory_gib(device: str) -> float:
    """The run's peak memory so far, in GiB: on a GPU, PyTorch's peak of allocated tensor memory on the current
    device (weights, gradients, optimizer state, activations: what the dry run's ``memory_gib`` estimates, without
    the CUDA context); on the CPU, this process's peak resident memory (the Python runtime and libraries included)."""
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def results_csv(rows: list[StepRow], extra: Sequence[str] = ()) -> str:
    """OpenAI's five columns, then the method's own figures named in ``extra`` (from each row's ``extra``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*RESULTS_HEADER, *extra])
    for r in rows:
        writer.writerow(
            [
                r.step,
                _cell(r.train_loss),
                _cell(r.train_mean_token_accuracy),
                _cell(r.valid_loss),
                _cell(r.valid_mean_token_accuracy),
                *(_cell(r.extra.get(name)) for name in extra),
            ]
        )
    return out.getvalue()


def make_callback(run: TrainingRun) -> TrainerCallback:
    from transformers import TrainerCallback

    class ReportingCallback(TrainerCallback):
        """Metrics every optimizer step, a checkpoint every epoch; stop requests and CPU threads at step boundaries."""

        def __init__(self) -> None:
            self.step_started = time.monotonic()
            self.last_num_tokens: float | None = 0.0
            self.pending: StepRow | None = None  # an epoch's last step waits for its evaluation

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.max_steps != run.total_steps:
                run.warn(f"trainer plans {state.max_steps} steps, {run.total_steps} were reported at start")
                run.total_steps = state.max_steps

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            run.follow_cpu_threads(state.global_step + 1)
            self.step_started = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if run.stop.reason is not None:
                control.should_training_stop = True
            elif state.global_step in run.eval_steps:
                control.should_evaluate = True  # right after this step's log (TRL's own eval strategy is off)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> Any:
            logs = logs or {}
            if "loss" in logs and "eval_loss" not in logs:
                self._train_log(state, logs)
            elif any(key.startswith("eval_") for key in logs):
                row = self.pending or (run.rows[-1] if run.rows else None)
                if row is not None:
                    loss, acc = logs.get("eval_loss"), logs.get("eval_mean_token_accuracy")
                    if run.method.valid_loss_from_eval:
                        # The evaluation covers the whole validation set: it is also the step's valid_loss.
                        row.full_valid_loss = row.valid_loss = loss
                        row.full_valid_mean_token_accuracy = row.valid_mean_token_accuracy = acc
                    figures = run.method.metrics({k.removeprefix("eval_"): v for k, v in logs.items()})
                    row.extra.update({f"valid_{name}": value for name, value in figures.items()})
                    log.info(
                        "eval: step %d valid_loss %s valid_acc %s %s",
                        row.step,
                        _fmt(row.valid_loss),
                        _fmt(row.valid_mean_token_accuracy),
                        " ".join(f"valid_{k} {_fmt(v)}" for k, v in figures.items()),
                    )

        def _train_log(self, state: Any, logs: dict[str, Any]) -> None:
            elapsed = max(time.monotonic() - self.step_started, 1e-9)
            num_tokens = logs.get("num_tokens")
            tokens = None
            if num_tokens is not None and self.last_num_tokens is not None:
                tokens = int(num_tokens - self.last_num_tokens)
            self.last_num_tokens = num_tokens
            row = StepRow(
                step=state.global_step,
                epoch=float(state.epoch or 0.0),
                train_loss=logs.get("loss"),
                train_mean_token_accuracy=logs.get("mean_token_accuracy"),
                learning_rate=logs.get("learning_rate"),
                tokens=tokens,
                seconds=elapsed,
                tokens_per_second=(tokens / elapsed) if tokens is not None else None,
                peak_memory_gib=peak_memory_gib(run.device.device if run.device else "cpu"),
                extra=run.method.metrics(logs),
            )
            run.rows.append(row)
            print(
                f"step {row.step}/{run.total_steps} epoch {row.epoch:.2f} loss {_fmt(row.train_loss)} "
                f"acc {_fmt(row.train_mean_token_accuracy)} lr {_fmt(row.learning_rate)} "
                f"tok/s {_fmt(row.tokens_per_second)}",
                flush=True,
            )
            if row.step in run.eval_steps and run.stop.reason is None:
                self.pending = row  # reported with its valid_loss, after the evaluation
                return
            run.report_metrics(row)
            if row.step in run.checkpoint_steps:
                run.checkpoint(row.step, row.epoch)

        def _flush(self) -> None:
            if self.pending is not None:
                run.report_metrics(self.pending)
                self.pending = None

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            run.epochs_done += 1
            if run.stop.reason is not None:
                control.should_evaluate = False  # stop promptly: no evaluation, no checkpoint
                self._flush()

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            row = self.pending
            self._flush()
            # A new best validation loss between the planned checkpoints is checkpointed too, so the best
            # model is always one of the job's checkpoints.
            if row is not None and (row.step in run.checkpoint_steps or run.is_new_best(row)):
                run.checkpoint(row.step, row.epoch)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self._flush()

    return ReportingCallback()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
