"""Full-state checkpoints and resuming a run from them (pause/resume, crash-resume, preemption).

At every checkpoint step (and at the step boundary where a pause or a SIGTERM stops the run) HF Trainer writes its
own checkpoint folder: the adapter (safetensors), ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` and
``trainer_state.json``; it is uploaded to ``{output_prefix}/resume/step-{N}/`` with the completion marker last
(:mod:`tunery.resume`). Those ``.pt``/``.pth`` files are the trainer's own state, never user data, and
transformers loads them with ``torch.load(weights_only=True)``.

A run with ``JobSpec.resume_from`` (``"latest"`` or a state prefix; ``--resume-from`` on the command line) downloads
the newest complete state, checks every file's SHA-256, restores the metrics rows so far and continues with
``trainer.train(resume_from_checkpoint=...)``: same total steps, step numbers continuing.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.layout import checkpoint_prefix
from tunery.resume import (
    ResumeState,
    StateMismatch,
    complete_states,
    download_state,
    prune_states,
    read_marker,
    state_prefix,
    upload_state,
)

from .checkpoint import MANIFEST

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from .base import TrainingRun

log = logging.getLogger("tunery.trainer.resume")

# Stop reasons after which the run writes a resume state before it exits (see errors.EXIT_PREEMPTED).
PREEMPT_REASONS = ("paused", "preempted")
# HF Trainer writes these too; they are not needed to resume (and training_args.bin is a pickle).
_SKIPPED = {"training_args.bin", "README.md"}
# Complete states kept (the newest, and one to fall back to should it be damaged); older ones are deleted.
KEEP_STATES = 2


def save_state(run: TrainingRun, folder: Path, step: int, epoch: float) -> str:
    """Upload HF Trainer's checkpoint folder as the resume state of ``step``; returns its prefix."""
    for name in _SKIPPED:
        (folder / name).unlink(missing_ok=True)
    prefix = state_prefix(run.spec.output_prefix, step)
    marker = {
        "job_id": run.spec.job_id,
        "step": step,
        "epoch": epoch,
        "total_steps": run.total_steps,
        "seed": run.spec.seed,
        "rows": [asdict(r) for r in run.rows if r.step <= step],
        # What the control plane was told: a run resuming from this state sends what it missed (report_backlog).
        "metrics_reported_step": min(run.reporter.metrics_reported_step, step),
        "checkpoints": [
            {"step": s, "epoch": epoch, "reported": reported}
            for s, (epoch, reported) in sorted(run.checkpoint_reports.items())
            if s <= step
        ],
    }
    upload_state(run.store, prefix, folder, marker)
    prune_states(run.store, run.spec.output_prefix, keep=KEEP_STATES)
    return prefix


def drop_states(run: TrainingRun) -> None:
    """After the final model is written, the resume states are of no more use."""
    prune_states(run.store, run.spec.output_prefix, keep=0)


def make_state_callback(run: TrainingRun) -> TrainerCallback:
    from transformers import TrainerCallback

    class ResumeStateCallback(TrainerCallback):
        """Asks HF Trainer for a full checkpoint at checkpoint steps and when a pause/preemption stops the run,
        then uploads it. Listed after the reporting callback, so the step's metrics and adapter come first."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            reason = run.stop.reason
            if reason in PREEMPT_REASONS:
                control.should_save = True
                control.should_training_stop = True
            elif reason is None and state.global_step in run.checkpoint_steps and state.global_step < run.total_steps:
                control.should_save = True

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            step = int(state.global_step)
            epoch = float(state.epoch or 0.0)
            folder = Path(args.output_dir) / f"checkpoint-{step}"
            if run.stop.reason in PREEMPT_REASONS:
                run.checkpoint(step, epoch)  # the servable adapter of the step it stops at, reported
            try:
                prefix = save_state(run, folder, step, epoch)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            log.info("resume state: step %d -> %s", step, prefix)
            if run.stop.reason in PREEMPT_REASONS:
                # The stop may have come during this step's checkpoint, after on_step_end: stop here all the same,
                # at the state just saved, rather than train one more step and save again.
                control.should_training_stop = True
                run.reporter.event(
                    "info",
                    f"Saved the training state at step {step}/{run.total_steps}; stopping ({run.stop.reason})",
                    {"step": step, "resume_prefix": prefix},
                    wait=False,
                )

    return ResumeStateCallback()


def report_backlog(run: TrainingRun, marker: dict[str, Any]) -> None:
    """Report what the runs before this one did but could not tell the control plane: a run whose server was killed
    trains on until it notices (trainer/orphan.py), then saves its state with metrics and checkpoints that nobody
    received. The state's marker says how far the control plane acknowledged them; this run sends the rest (the
    control plane keeps the first report of each step and of each checkpoint, so one sent twice changes nothing).
    The checkpoints of the lineage become this run's own, so none is written again."""
    last = run.rows[-1].step if run.rows else 0
    reported = int(marker.get("metrics_reported_step", last))  # a state written before it was recorded: all sent
    for row in run.rows:
        if row.step > reported:
            run.reporter.metrics(row.to_proto(run.reporter.pb, run.total_steps))
    for entry in marker.get("checkpoints", []):
        step, epoch = int(entry["step"]), float(entry["epoch"])
        prefix = checkpoint_prefix(run.spec.output_prefix, step)
        if prefix not in run.checkpoints:
            run.checkpoints.append(prefix)
        run.checkpoint_reports[step] = (epoch, bool(entry.get("reported")))
        if not entry.get("reported") and run.store.exists(f"{prefix}/{MANIFEST}"):
            log.info("reporting the checkpoint at step %d, written by an earlier run", step)
            run.report_checkpoint(step, epoch)


def candidates(run: TrainingRun, resume_from: str) -> list[ResumeState]:
    """The states to try, newest first: every complete one for ``latest``, else the one named (when complete)."""
    states = complete_states(run.store, run.spec.output_prefix)
    if resume_from != "latest":
        states = [s for s in states if s.prefix.rstrip("/") == resume_from.rstrip("/")]
        if not states and read_marker(run.store, resume_from.rstrip("/")) is None:
            run.warn(f"The checkpoint {resume_from} is incomplete or missing; it is not used")
    return states


def prepare_resume(run: TrainingRun, resume_from: str | None, workdir: Path) -> str | None:
    """Download the state to resume from and restore the run's bookkeeping; returns the local folder for
    ``trainer.train(resume_from_checkpoint=...)``, or None to start from the beginning."""
    if not resume_from:
        return None
    from .metrics import StepRow

    for state in candidates(run, resume_from):
        marker = state.marker
        if marker.get("job_id") != run.spec.job_id or int(marker.get("total_steps", -1)) != run.total_steps:
            run.warn(
                f"The checkpoint at step {state.step} was written for {marker.get('total_steps')} steps, this run "
                f"has {run.total_steps}; it is not used"
            )
            continue
        folder = workdir / f"resume-step-{state.step}"
        try:
            download_state(run.store, state, folder)
        except StateMismatch as e:
            run.warn(f"The checkpoint at step {state.step} is damaged ({e}); trying an older one")
            shutil.rmtree(folder, ignore_errors=True)
            continue
        run.rows = [StepRow(**row) for row in marker.get("rows", [])]
        run.epochs_done = state.step // run.steps_per_epoch if run.steps_per_epoch else 0
        for cb in run.trainer.callback_handler.callbacks:
            if hasattr(cb, "last_num_tokens"):
                cb.last_num_tokens = None  # the first resumed step's token count is unknown
        message = f"Resuming from the checkpoint at step {state.step}/{run.total_steps}"
        log.info("%s (%s)", message, state.prefix)
        run.reporter.event("info", message, {"step": state.step, "resume_prefix": state.prefix})
        report_backlog(run, marker)
        return str(folder)
    run.reporter.event("info", "No complete checkpoint to resume from: training starts from the beginning")
    return None
