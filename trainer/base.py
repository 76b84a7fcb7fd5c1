"""The base of every run: its state, shared by the driver (``trainer/run.py``), the method and the callback inside
TRL's training loop; the manifest, checkpoints (the best one marked), the final model and the results file."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunery import ids, layout
from tunery.evalreport import EVAL_GATE_FAILED, REPORT_FILE, EvalReport, promotion
from tunery.hyperparams import spaced_steps
from tunery.jobspec import DataFile, JobSpec
from tunery.jobstate import MIX_PARAM
from tunery.layout import checkpoint_prefix, model_prefix
from tunery.storage import ObjectStore, open_store

from .checkpoint import (
    MANIFEST,
    MANIFEST_FORMAT,
    library_versions,
    manifest_bytes,
    sha256_text,
    upload_checkpoint,
    utc_now,
)
from .data_files import DataFileRead, read_records
from .data_options import DataOptionsReport
from .errors import RunStopped, TrainerError, out_of_memory
from .loading import DeviceChoice
from .metrics import StepRow, results_csv
from .reporter import Reporter
from .resume import PREEMPT_REASONS, drop_states

if TYPE_CHECKING:
    from .evaluation import Evaluator
    from .integrations import Trackers
    from .methods import TrainerMethod

log = logging.getLogger("tunery.trainer")


class StopSignal:
    """Set by SIGTERM or by a cancel reply; polled at every step boundary."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.in_training = False

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def check(self) -> None:
        if self.reason is not None:
            raise RunStopped(self.reason)


@dataclass
class RunResult:
    total_steps: int
    tokens_per_epoch: int
    trained_tokens: int
    train_examples: int
    model_prefix: str
    results_key: str
    rows: list[StepRow] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # of which the eval reports took (trainer/evaluation.py)


class TrainingRun:
    """State shared by the driver (:func:`run`) and the callback inside the TRL training loop."""

    def __init__(
        self,
        spec: JobSpec,
        reporter: Reporter,
        stop: StopSignal,
        method: TrainerMethod,
        store: ObjectStore | None = None,
    ):
        self.spec = spec
        self.plan = spec.plan
        self.method = method
        self.reporter = reporter
        self.stop = stop
        self.store = store or open_store(spec.object_store)
        self.data_sha256: dict[str, dict[str, Any]] = {}
        self.mix_data: DataFileRead | None = None
        self.data_options: DataOptionsReport | None = None
        self.rows: list[StepRow] = []
        self.checkpoints: list[str] = []
        # Each checkpoint step of this run's lineage (the runs it resumed from included): its epoch, and whether the
        # control plane acknowledged its report. A resume state carries them (trainer/resume.py).
        self.checkpoint_reports: dict[int, tuple[float, bool]] = {}
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.tokens_per_epoch = 0
        self.trained_tokens_per_epoch = 0  # tokens that carry loss
        self.has_eval = False
        self.eval_steps: set[int] = set()  # optimizer steps after which the validation set is evaluated
        self.checkpoint_steps: set[int] = set()
        self.epochs_done = 0
        self.trainer: Any = None
        self.tokenizer: Any = None
        self.device: DeviceChoice | None = None
        # The checkpoint with the lowest validation loss so far: {"step", "valid_loss", "prefix"}; its manifest says
        # ``best: true`` (rewritten to false when a later checkpoint beats it).
        self.best: dict[str, Any] | None = None
        self.best_manifest: dict[str, Any] | None = None
        # The eval reports (trainer/evaluation.py) of this run's checkpoints by step, when the job writes them.
        self.evaluator: Evaluator | None = None
        self.reports: dict[int, EvalReport] = {}
        # The experiment trackers the job logs to (trainer/integrations.py), once training starts; None without any.
        self.trackers: Trackers | None = None
        self.started_threads = 0  # the CPU threads this run started with (OMP_NUM_THREADS), once training starts
        self.follows_threads = True  # False once torch refused to change them: the run keeps its own

    # -- events
    def warn(self, message: str, data: dict[str, Any] | None = None) -> None:
        log.warning("%s", message)
        self.reporter.event("warn", message, data)

    def report_metrics(self, row: StepRow) -> None:
        """A step's figures, complete (after its evaluation, if any): to the control plane, and to the job's
        experiment trackers."""
        self.reporter.metrics(row.to_proto(self.reporter.pb, self.total_steps))
        if self.trackers is not None:
            self.trackers.log(row)

    def follow_cpu_threads(self, step: int) -> None:
        """At the start of ``step``: train with the CPU threads the control plane says now (scheduler.cores: an
        embedded server gives its local trainers a core fewer while its chat engine answers), or those this run
        started with where it says none; an event when that changes."""
        import torch

        now = torch.get_num_threads()
        if not self.started_threads:
            self.started_threads = now
        wanted = self.reporter.cpu_threads or self.started_threads
        if wanted == now or not self.follows_threads:
            return
        try:
            torch.set_num_threads(wanted)
        except RuntimeError as e:  # vLLM's CPU build with its threads bound to cores forbids it
            log.warning("this run keeps its %d CPU threads: torch refused %d (%s)", now, wanted, e)
            self.follows_threads = False
            return
        why = (
            "the server's chat engine is answering, and they share its cores"
            if wanted < self.started_threads
            else "the server's chat engine is idle"
        )
        plural = "s" if wanted > 1 else ""
        self.reporter.event(
            "info",
            f"From step {step} this run trains with {wanted} CPU thread{plural} (it had {now}): {why}",
            {"step": step, "cpu_threads": wanted},
        )

    # -- the steps of a run
    def record_file(self, name: str, data_file: DataFile, sha256: str, examples: int) -> None:
        """What a data file was when it was read, for the manifest (``training_file``, ``validation_file``, ...)."""
        self.data_sha256[name] = {
            "file_id": data_file.file_id,
            "key": data_file.key,
            "sha256": sha256,
            "examples": examples,
        }

    def read_data(self) -> tuple[DataFileRead, DataFileRead | None]:
        """The training and validation files, of the kind the method trains on, and the mix file if any; each
        recorded for the manifest."""
        spec, kind = self.spec, self.method.info.data
        train = read_records(self.store, spec.data_file(), "training_file", kind)
        self.record_file("training_file", spec.data_file(), train.sha256, len(train.records))
        valid = None
        if spec.validation_file is not None:
            valid = read_records(self.store, spec.validation_file, "validation_file", kind)
            self.record_file("validation_file", spec.validation_file, valid.sha256, len(valid.records))
        mix = spec.data.mix if spec.data is not None else None
        if mix is not None:
            self.mix_data = read_records(self.store, mix.file, MIX_PARAM, "supervised")
            self.record_file("mix_file", mix.file, self.mix_data.sha256, len(self.mix_data.records))
        log.info(
            "data: training %d examples (sha256 %s)%s",
            len(train.records),
            train.sha256,
            f", validation {len(valid.records)} examples (sha256 {valid.sha256})" if valid else "",
        )
        return train, valid

    def manifest(self, step: int, epoch: float, metrics: dict[str, Any], best: bool = False) -> dict[str, Any]:
        spec, plan = self.spec, self.plan
        model = self.trainer.model if self.trainer is not None else None
        peft_cfg = model.peft_config["default"] if model is not None and hasattr(model, "peft_config") else None
        if peft_cfg is not None:  # a parent adapter brings its own rank, alpha and targets
            lora = {"r": peft_cfg.r, "alpha": peft_cfg.lora_alpha, "dropout": peft_cfg.lora_dropout}
        else:
            lora = plan.lora.model_dump()
        target = peft_cfg.target_modules if peft_cfg is not None else plan.lora.target_modules
        tok = self.tokenizer
        return {
            "format": MANIFEST_FORMAT,
            "job_id": spec.job_id,
            "fine_tuned_model": spec.fine_tuned_model,
            "base_model": spec.base_model,
            "method": plan.method,
            "step": step,
            "epoch": epoch,
            "seed": spec.seed,
            "data_files": self.data_sha256,
            "data_options": self.data_options.data() if self.data_options else None,
            "hyperparameters": plan.model_dump(),
            "adapter": plan.adapter,
            "precision": self.device.precision if self.device else plan.precision,
            "init_adapter_prefix": spec.init_adapter_prefix,
            "lora": None
            if plan.adapter == "full"
            else {
                **plan.lora.model_dump(),
                **lora,
                "resolved_target_modules": sorted(target) if isinstance(target, set | list) else target,
                "task_type": "CAUSAL_LM",
            },
            "best": best,
            "best_checkpoint": self.best,
            "tokenizer": {
                "eos_token": tok.eos_token,
                "pad_token": tok.pad_token,
                "chat_template_sha256": sha256_text(tok.chat_template or ""),
            },
            "training": {
                "device": self.device.device if self.device else None,
                "dtype": str(self.device.dtype).removeprefix("torch.") if self.device else None,
                "total_steps": self.total_steps,
                "tokens_per_epoch": self.tokens_per_epoch,
                "trained_tokens_per_epoch": self.trained_tokens_per_epoch,
                "checkpoint_steps": sorted(self.checkpoint_steps),
                "eval_steps": sorted(self.eval_steps),
            },
            "versions": library_versions(),
            "created_at": utc_now(),
            "metrics": metrics,
            **self.method.manifest_extra(self),
        }

    def eval_report(self, name: str, step: int, row: StepRow | None, epoch: float) -> EvalReport | None:
        """The eval report of the model being trained, named ``name``, at ``step`` (None when the job writes none)."""
        if self.evaluator is None:
            return None
        return self.evaluator.report(self.trainer.model, name, step, epoch, row.train_loss if row else None)

    def save_adapter(
        self,
        prefix: str,
        step: int,
        epoch: float,
        row: StepRow | None,
        best: bool = False,
        report: EvalReport | None = None,
    ) -> None:
        """Upload the model being trained under ``prefix``, with its eval report (written before the manifest, and
        summarized in it: a report is complete exactly when its manifest exists)."""
        manifest = self.manifest(step, epoch, row.summary() if row else {}, best=best)
        extra = {}
        if report is not None:
            manifest["eval_report"] = {"file": REPORT_FILE, **report.summary().model_dump(exclude={"file_id"})}
            extra[REPORT_FILE] = report.model_dump_json(indent=2).encode()
        written = upload_checkpoint(
            self.store,
            prefix,
            self.trainer.model,
            self.tokenizer,
            manifest,
            base_model=self.spec.base_model,
            full=self.plan.adapter == "full",
            extra_files=extra,
        )
        if best:
            self.best_manifest = written

    def train_to_end(self, resume_dir: str | None) -> tuple[float, str, str]:
        """Train (from ``resume_dir`` when resuming), check that every step ran, save the final model (its manifest
        never ``best``: best_checkpoint names the best checkpoint) and the results file, and drop the resume
        states. Returns the training seconds, the final model's prefix and the results file's key."""
        spec, stop = self.spec, self.stop
        hp = self.plan
        started = time.monotonic()
        stop.in_training = True
        try:
            self.trainer.train(resume_from_checkpoint=resume_dir)
        except Exception as e:
            args, on_gpu = self.trainer.args, self.device is not None and self.device.device == "cuda"
            oom = out_of_memory(
                e,
                len(self.rows) + 1,
                self.device is not None and self.device.gradient_checkpointing,
                reinforcement=hp.reinforcement is not None,
                sampler_share=args.vllm_gpu_memory_utilization if getattr(args, "use_vllm", False) and on_gpu else None,
            )
            if oom is None:
                raise
            raise oom from e
        finally:
            stop.in_training = False
        train_seconds = time.monotonic() - started
        stop.check()
        if self.epochs_done != hp.n_epochs or len(self.rows) != self.total_steps:
            raise TrainerError(
                f"training ended after {len(self.rows)} of {self.total_steps} steps "
                f"({self.epochs_done} of {hp.n_epochs} epochs)"
            )
        last = self.rows[-1]
        final_prefix = model_prefix(spec.output_prefix)
        results_key = layout.results_key(spec.output_prefix)
        self.store.put_bytes(results_key, results_csv(self.rows, self.method.results_columns).encode())
        report = self.final_report(last)
        gate = self.spec.eval.gate if self.spec.eval is not None else None
        chosen = self.gated_choice(final_prefix, report) if report is not None and gate is not None else None
        if chosen is None:
            self.save_adapter(final_prefix, last.step, float(hp.n_epochs), last, report=report)
        else:
            self.copy_checkpoint(chosen, final_prefix)
        drop_states(self)
        return train_seconds, final_prefix, results_key

    def final_report(self, last: StepRow) -> EvalReport | None:
        """The final model's report: its last checkpoint's when that checkpoint is the final weights, else new."""
        if self.evaluator is None:
            return None
        same = self.reports.get(last.step) or self.stored_report(last.step)
        if same is not None:
            return same.model_copy(update={"model": self.spec.fine_tuned_model})
        return self.eval_report(self.spec.fine_tuned_model, last.step, last, float(self.plan.n_epochs))

    def stored_report(self, step: int) -> EvalReport | None:
        """A checkpoint's report written by an earlier run of this job (complete: its manifest exists)."""
        prefix = checkpoint_prefix(self.spec.output_prefix, step)
        key = layout.eval_report_key(prefix)
        if not self.store.exists(f"{prefix}/{MANIFEST}") or not self.store.exists(key):
            return None
        return EvalReport.model_validate_json(self.store.get_bytes(key))

    def gated_choice(self, final_prefix: str, final: EvalReport) -> EvalReport | None:
        """With a gate: None when the final model is the one to promote (:func:`tunery.evalreport.promotion`), the
        report of the checkpoint to promote instead, or, when none passes, fail the job with ``eval_gate_failed``:
        the final model's report kept where the model would have been, the checkpoints kept for inspection."""
        checkpoints = []
        for step in sorted({*self.checkpoint_reports, *self.reports}):
            report = self.reports.get(step) or self.stored_report(step)
            if report is not None:
                checkpoints.append(report)
        chosen = promotion(final, checkpoints)
        if chosen is None:
            self.store.put_bytes(layout.eval_report_key(final_prefix), final.model_dump_json(indent=2).encode())
            drop_states(self)
            failed = "; ".join(c.message for c in (final.gate.checks if final.gate else []) if not c.passed)
            raise TrainerError(
                f"No checkpoint passed the job's eval gate (tunery.eval.gate). The final model: {failed}. The "
                "checkpoints are kept for inspection; their eval reports say why.",
                code=EVAL_GATE_FAILED,
            )
        return None if chosen is final else chosen

    def copy_checkpoint(self, report: EvalReport, final_prefix: str) -> None:
        """Make the checkpoint of ``report`` the job's model: its files under ``final_prefix``, then its manifest
        (marked ``promoted_from``) and its report, renamed to the job's model."""
        source = checkpoint_prefix(self.spec.output_prefix, report.step)
        manifest = json.loads(self.store.get_bytes(f"{source}/{MANIFEST}"))
        promoted = report.model_copy(update={"model": self.spec.fine_tuned_model})
        files = {}
        for rel in sorted(manifest.get("files", {})):
            if rel == REPORT_FILE:
                continue
            _, files[rel] = self.store.put_stream(f"{final_prefix}/{rel}", self.store.iter_chunks(f"{source}/{rel}"))
        _, files[REPORT_FILE] = self.store.put_bytes(
            layout.eval_report_key(final_prefix), promoted.model_dump_json(indent=2).encode()
        )
        manifest.update(
            files=files,
            best=False,
            promoted_from={"step": report.step, "prefix": source, "reason": "tunery.eval.gate"},
            eval_report={"file": REPORT_FILE, **promoted.summary().model_dump(exclude={"file_id"})},
            created_at=utc_now(),
        )
        self.store.put_bytes(f"{final_prefix}/{MANIFEST}", manifest_bytes(manifest))
        best = "the highest mean reward" if report.reward is not None else "the lowest validation loss"
        message = (
            f"Eval gate: the checkpoint of step {report.step} passes it with {best} and is the job's fine-tuned model"
        )
        log.info("%s", message)
        self.reporter.event("info", message, {"step": report.step, "promoted_from": source})

    def is_new_best(self, row: StepRow | None) -> bool:
        """Whether ``row`` has the lowest validation loss so far (NaN never is)."""
        if row is None or row.valid_loss is None or math.isnan(row.valid_loss):
            return False
        return self.best is None or row.valid_loss < self.best["valid_loss"]

    def unmark_best(self) -> None:
        """The previous best checkpoint is no longer the best: rewrite its manifest with ``best: false``."""
        if self.best is None or self.best_manifest is None:
            return
        manifest = {**self.best_manifest, "best": False}
        key = f"{self.best['prefix']}/{MANIFEST}"
        self.store.put_bytes(key, manifest_bytes(manifest))
        self.best_manifest = None

    def plan_steps(self, n_examples: int) -> None:
        """Steps, and the steps that evaluate and checkpoint (evenly spaced; one per epoch by default)."""
        hp = self.plan
        self.steps_per_epoch = steps_per_epoch(n_examples, hp.batch_size)
        self.total_steps = self.steps_per_epoch * hp.n_epochs
        n_ckpt = hp.n_epochs if hp.n_checkpoints is None else hp.n_checkpoints
        n_evals = hp.n_epochs if hp.n_evals is None else hp.n_evals
        self.checkpoint_steps = set(spaced_steps(self.total_steps, max(1, n_ckpt)))
        self.eval_steps = set(spaced_steps(self.total_steps, n_evals)) if self.has_eval else set()

    def checkpoint(self, step: int, epoch: float) -> None:
        """A checkpoint at ``step`` (after its evaluation, if any), then its report."""
        if self.stop.reason is not None and self.stop.reason not in PREEMPT_REASONS:
            return
        row = self.rows[-1] if self.rows and self.rows[-1].step == step else None
        prefix = checkpoint_prefix(self.spec.output_prefix, step)
        if prefix in self.checkpoints:
            return  # already written at this step (a pause at a checkpoint step)
        t0 = time.monotonic()
        best = self.is_new_best(row)
        if best:
            assert row is not None and row.valid_loss is not None
            self.unmark_best()
            self.best = {"step": step, "valid_loss": row.valid_loss, "prefix": prefix}
        report = self.eval_report(ids.checkpoint_model_name(self.spec.fine_tuned_model, step), step, row, epoch)
        if report is not None:
            self.reports[step] = report
        self.save_adapter(prefix, step, epoch, row, best=best, report=report)
        self.checkpoints.append(prefix)
        self.checkpoint_reports[step] = (epoch, False)
        log.info("checkpoint: epoch %.2f step %d -> %s (%.1fs)", epoch, step, prefix, time.monotonic() - t0)
        self.report_checkpoint(step, epoch)

    def report_checkpoint(self, step: int, epoch: float) -> bool:
        """Report the checkpoint of ``step`` (written and complete); whether the control plane acknowledged it."""
        row = next((r for r in reversed(self.rows) if r.step == step), None)
        metrics = (row or StepRow(step=step, epoch=epoch)).to_proto(self.reporter.pb, self.total_steps)
        delivered = self.reporter.checkpoint(step, checkpoint_prefix(self.spec.output_prefix, step), metrics)
        self.checkpoint_reports[step] = (epoch, delivered)
        return delivered


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)
