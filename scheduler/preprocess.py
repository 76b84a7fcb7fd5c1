"""File and job preprocessing: validating uploaded training files and the files of new jobs, resolving a job's
hyperparameters against its data, checking its adapter and precision against the hardware, and estimating how long
it will take, before it is queued. Whole files are read here, on a small pool of worker threads beside the
scheduler loop, so cancels and launches never wait for a validation."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler import hardware
from scheduler.claims import Claims, lapsed, release
from scheduler.context import SchedulerContext, SchedulerPart
from scheduler.runs import fail, fail_in
from scheduler.validation import (
    METHOD_FOR_KIND,
    MIX_PARAM,
    check_scan,
    evaluation_file_problem,
    file_error_code,
    file_report,
    scan_stored,
    status_details,
    token_summary,
)
from tunery import estimate as estimates
from tunery import hyperparams, ids, jobstate, servable
from tunery.db import File, Job
from tunery.db.ops import add_event, now
from tunery.files import report_key
from tunery.filescan import FileScan, ScanOptions
from tunery.graders import cosine_graders, model_graders, parse_grader
from tunery.jobspec import mix_count
from tunery.jobstate import CHAT_PARAMS, EVAL_FILE_PARAM, EVAL_GRADER_PARAM, ErrorCode, JobError, JobKind, JobStatus
from tunery.methods import GRADER_PARAM
from tunery.plan import TrainingPlan, check_request, resolve_plan
from tunery.sharing import resolve_usable, usable_model
from tunery.storage import ObjectNotFound

log = logging.getLogger("tunery.scheduler")

# Validation workers of one replica (whole files are read on them, beside the loop).
VALIDATION_WORKERS = 2


def job_files(s: Session, job: Job) -> dict[str, File]:
    """The job's input files that still exist, by id."""
    wanted = [file_id for _, file_id in job.input_files()]
    return {f.id: f for f in s.scalars(select(File).where(File.id.in_(wanted)))}


def parent_model_prefix(s: Session, job: Job) -> str | None:
    """The object prefix of the fine-tuned model a job continues from (a model its project may use: its own, or one
    shared with it, tunery/sharing.py), or None when it starts from a base model or the model is gone for it."""
    if job.model == job.base_model:
        return None
    parent = usable_model(s, job.organization_id, job.project_id, job.model)
    return parent.object_prefix if parent is not None else None


# The kinds of job whose run may grade answers with a reinforcement job's grader: the job, and an evaluation of a
# model it made (which grades a reinforcement file with it; the plan it carries is the job's).
GRADING = (JobKind.fine_tune, JobKind.evaluation)


def grader_param(job: Job) -> str:
    """Where errors about a job's grader point: an evaluation's own ``grader``, else the reinforcement job's
    ``method.reinforcement.grader`` (an evaluation without its own is graded by its model's job's)."""
    return EVAL_GRADER_PARAM if job.evaluation_grader() is not None else GRADER_PARAM


def judge_names(job: Job) -> dict[str, str]:
    """The judge models a reinforcement job's grader names (its score_model graders'), each with where the first
    grader that names it is (``method.reinforcement.grader.graders.j``); an evaluation has its own grader's, or those
    of the reinforcement job that made its model (it may grade a reinforcement file with them); none for an export,
    which grades nothing."""
    if job.kind not in GRADING:
        return {}
    plan = job.training_plan()
    rl = plan.reinforcement if plan is not None else None
    if rl is None:
        return {}
    found: dict[str, str] = {}
    param = grader_param(job)
    for where, grader in model_graders(parse_grader(rl.grader, param), param):
        found.setdefault(grader.model, where)
    return found


def cosine_metric(job: Job) -> str | None:
    """Where the first cosine metric of a reinforcement job's grader is (``method.reinforcement.grader.graders.c``):
    what needs the embedding model; None when it has none."""
    if job.kind not in GRADING:
        return None
    plan = job.training_plan()
    rl = plan.reinforcement if plan is not None else None
    if rl is None:
        return None
    param = grader_param(job)
    found = cosine_graders(parse_grader(rl.grader, param), param)
    return found[0][0] if found else None


class Preprocessor(SchedulerPart):
    """Validates new files and the files of new jobs on its worker threads, and queues the jobs that pass."""

    def __init__(self, ctx: SchedulerContext, claims: Claims, wake: Callable[[], None]):
        super().__init__(ctx)
        self.claims = claims
        self.wake = wake
        # Validation reads whole files: it runs beside the loop, so cancels and launches never wait for it.
        self._validation = ThreadPoolExecutor(max_workers=VALIDATION_WORKERS, thread_name_prefix="validate")
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    def shutdown(self) -> None:
        """Stop the workers; validations not started are dropped (another pass or replica takes them again)."""
        self._validation.shutdown(wait=False, cancel_futures=True)

    def validate_uploaded_files(self) -> None:
        """New training files: write each one's validation report and set its status (processed | error)."""

        def claim(s: Session) -> list[tuple[str, str]]:
            q = (
                select(File)
                .where(File.purpose == "fine-tune", File.status == "uploaded", lapsed(File, now()))
                .order_by(File.pk)
                .limit(self._free_workers())
                .with_for_update(skip_locked=True)
            )
            files = list(s.scalars(q))
            for f in files:
                self.claims.claim(f)
            return [(f.id, f.object_key) for f in files]

        if self._free_workers() <= 0:
            return
        for file_id, key in self.db.transaction(claim):
            self._in_background(file_id, self._validate_file, file_id, key)

    def scan_options(self, model: tuple[str, str] | None, max_seq_length: int | None = None) -> ScanOptions:
        st = self.settings
        return ScanOptions(
            max_line_bytes=st.max_line_bytes,
            max_lines=st.max_lines,
            model_name=model[0] if model else "",
            model_folder=model[1] if model else None,
            max_seq_length=max_seq_length,
            near_dup_max_examples=st.near_dup_max_examples,
            near_dup_threshold=st.near_dup_threshold,
            workers=st.validation_workers,
        )

    def _free_workers(self) -> int:
        with self._busy_lock:
            return VALIDATION_WORKERS - len(self._busy)

    def _validate_file(self, file_id: str, key: str) -> None:
        started = time.monotonic()
        try:
            model = self.settings.validation_model_path()
            max_len = hyperparams.DEFAULT_MAX_SEQ_LENGTH if model else None
            opts = self.scan_options(model, max_len)
            report = file_report(
                file_id,
                scan_stored(self.store, key, opts),
                now(),
                model=model[0] if model else None,
                max_seq_length=max_len,
            )
        except ObjectNotFound:
            return  # deleted meanwhile
        except Exception:
            log.exception("validating file %s failed", file_id)
            report = {"status": "error", "internal": True}
        if not report.get("internal"):
            self.store.put_bytes(report_key(file_id), json.dumps(report).encode())

        def record(s: Session) -> int | None:
            f = s.scalar(select(File).where(File.id == file_id))
            if f is None:
                self.store.delete(report_key(file_id))
                return None
            if f.status != "uploaded":
                return None  # validated by another replica meanwhile (this one's claim had lapsed)
            release(f)
            f.status = report["status"]
            f.status_details = (
                "The file could not be validated because of an internal error."
                if report.get("internal")
                else status_details(report)
            )
            return int(f.bytes or 0)

        size = self.db.transaction(record)
        if size is not None:
            self.metrics.validations.labels(report["status"]).inc()
            self.metrics.validated_bytes.inc(size)
            self.metrics.validation_seconds.observe(time.monotonic() - started)

    def validate_pending(self) -> None:
        """Jobs whose files are to be checked: claim as many as there are free validation workers."""

        def claim(s: Session) -> list[str]:
            q = (
                select(Job)
                .where(Job.status == JobStatus.validating_files, lapsed(Job, now()))
                .order_by(Job.pk)
                .limit(self._free_workers())
                .with_for_update(skip_locked=True)
            )
            jobs = list(s.scalars(q))
            for job in jobs:
                self.claims.claim(job)
            return [job.id for job in jobs]

        if self._free_workers() <= 0:
            return
        for job_id in self.db.transaction(claim):
            self._in_background(job_id, self._validate_job, job_id)

    def _validate_job(self, job_id: str) -> None:
        try:
            self._validate(job_id)
        except Exception:
            log.exception("validating job %s failed", job_id)
            fail(
                self.db,
                job_id,
                JobError(ErrorCode.server_error, "The files could not be validated because of an internal error."),
            )

    def _in_background(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the validation worker unless work for ``key`` is already queued or running."""
        with self._busy_lock:
            if key in self._busy:
                return
            self._busy.add(key)

        def work() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("background validation of %s failed", key)
            finally:
                with self._busy_lock:
                    self._busy.discard(key)
                self.wake()  # a validated job can be launched at once

        try:
            self._validation.submit(work)
        except RuntimeError:  # shutting down
            with self._busy_lock:
                self._busy.discard(key)

    def _validate(self, job_id: str) -> None:
        with self.db.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != JobStatus.validating_files:
                return
            files = job_files(s, job)
        if job.kind == JobKind.evaluation:
            self._validate_evaluation(job, files)
            return
        if job.kind == JobKind.export:  # no file to check: its model is looked up when it is launched
            self._queue_short(job.id, [], "export")
            return
        error: JobError | None = None
        n_train = n_mix = 0
        train_scan: FileScan | None = None
        summaries: list[str] = []
        mix = job.tunery_options("data").get("mix")
        max_len = job.plan_request().training.requested_max_seq_length
        for param, file_id in job.input_files():
            f = files.get(file_id)
            if f is None:
                error = JobError(file_error_code(param), f"File {file_id} was deleted.", param)
                break
            # Again, against the job's model: its tokenizer's special tokens, token counts, over-length examples.
            model_folder = self.settings.base_model_paths().get(job.base_model)
            model = (job.base_model, model_folder) if model_folder else None
            scan = scan_stored(self.store, f.object_key, self.scan_options(model, max_len))
            method = "supervised" if param in CHAT_PARAMS else job.method.get("type", "supervised")
            check = check_scan(scan, f.id, param, method=method)
            if check.error:
                error = check.error
                break
            summary = check.summary(f.id, param)
            if model:
                report = file_report(f.id, scan, now(), model=job.base_model, max_seq_length=max_len, for_job=True)
                self.store.put_bytes(report_key(f.id, job.base_model), json.dumps(report).encode())
                tokens = token_summary(report)
                summary += f"; {tokens}" if tokens else ""
            summaries.append(summary)
            if param == "training_file":
                n_train = check.n_examples
                train_scan = scan if model else None
            elif param == MIX_PARAM:
                n_mix = check.n_examples
        if error:
            fail(self.db, job_id, error)
            return

        def queue(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != JobStatus.validating_files or job.claimed_by != self.replica_id:
                return  # cancelled meanwhile (or taken over by another replica after this one's claim lapsed)
            release(job)
            # Mixed-in examples are part of the training set (before the trainer's own drops: an estimate).
            n_total = n_train + (min(n_mix, mix_count(n_train, mix["fraction"])) if mix else 0)
            request = job.plan_request()
            has_validation = bool(job.validation_file)
            problem = check_request(
                request, has_validation=has_validation, continuing=job.model != job.base_model, data_mix=bool(mix)
            )
            if problem is not None:  # the API refuses these; a job stored before a rule existed fails here
                code = ErrorCode(problem.code) if problem.code in set(ErrorCode) else ErrorCode.unsupported_method
                fail_in(s, job, JobError(code, problem.message, problem.param))
                return
            hw = hardware.trainer_hardware(self.settings)
            max_len = request.training.requested_max_seq_length
            per_example = hyperparams.mean_tokens(train_scan.tokens, max_len) if train_scan is not None else None
            plan = resolve_plan(
                request, n_total, has_validation=has_validation, cpu_only=not hw.gpu, tokens_per_example=per_example
            )
            hw_check = hardware.check(plan, hw, self._memory_estimate(job, plan, train_scan, hw))
            if hw_check.error is not None:
                fail_in(s, job, hw_check.error)
                return
            plan = plan.model_copy(
                update={"precision": hw_check.precision, "gradient_checkpointing": hw_check.gradient_checkpointing}
            )
            if self.settings.serving_backend == "vllm":  # the model must be one vLLM can load (docs/serving.md)
                unservable = servable.training_problem(plan, self.settings.vllm_max_lora_rank)
                if unservable is not None:
                    fail_in(s, job, JobError(ErrorCode.unservable_adapter, unservable.message, unservable.param))
                    return
            job.set_plan(plan)
            job.runtime = self.backend.runtime()  # what its runs launch with, whatever the settings later say
            job.total_steps = hyperparams.total_steps(n_total, plan.batch_size, plan.n_epochs)
            estimate = self._estimate(s, job, train_scan, plan)
            job.estimated_finish = now() + round(estimate.gpu_seconds) if estimate else None
            job.fine_tuned_model = ids.fine_tuned_model_name(
                job.base_model, self.settings.organization_slug, job.suffix, job.id
            )
            jobstate.queue(job)
            for summary in summaries:
                add_event(s, job.id, summary)
            for warning in hw_check.warnings:
                add_event(s, job.id, warning, level="warn")
            add_event(
                s,
                job.id,
                "Files validated, moving job to queued state",
                data={
                    "train_examples": n_total,
                    "hyperparameters": plan.openai_hyperparameters(),
                    "training": plan.training_options(),
                },
            )

        self.db.transaction(queue)

    def _validate_evaluation(self, job: Job, files: dict[str, File]) -> None:
        """An evaluation's file (and reference set): the tenant's, still there, without invalid lines, and holding
        examples with an answer to score: chat (scored as a validation file is) or preference pairs (also DPO's
        rewards); or reinforcement prompts graded by the evaluation's own grader or, for a model a reinforcement job
        made, by its job's. Other reinforcement prompts, which nothing grades, and chat or preference examples given
        with a grader fail the evaluation with ``invalid_file`` (:func:`evaluation_file_problem`)."""
        model_folder = self.settings.base_model_paths().get(job.base_model)
        model = (job.base_model, model_folder) if model_folder else None
        plan = job.training_plan()
        max_len = plan.max_seq_length if plan is not None else None
        graded = plan is not None and plan.reinforcement is not None
        grader_given = job.evaluation_grader() is not None
        summaries: list[str] = []
        for param, file_id in job.input_files():
            f = files.get(file_id)
            if f is None:
                fail(self.db, job.id, JobError(file_error_code(param), f"File {file_id} was deleted.", param))
                return
            scan = scan_stored(self.store, f.object_key, self.scan_options(model, max_len))
            kind = scan.format.kind if scan.format is not None and param == EVAL_FILE_PARAM else "supervised"
            problem = None
            if param == EVAL_FILE_PARAM and scan.format is not None:
                problem = evaluation_file_problem(file_id, kind, job.model, graded, grader_given)
            if problem is not None:
                fail(self.db, job.id, JobError(ErrorCode.invalid_file, problem, param))
                return
            check = check_scan(scan, f.id, param, method=METHOD_FOR_KIND.get(kind, "supervised"))
            if check.error:
                fail(self.db, job.id, check.error)
                return
            summaries.append(check.summary(f.id, param))

        self._queue_short(job.id, summaries, "evaluation")

    def _queue_short(self, job_id: str, summaries: list[str], what: str) -> None:
        """Queue a job that carries the plan of the model it reads (an evaluation, an export): nothing to resolve."""

        def queue(s: Session) -> None:
            row = s.scalar(select(Job).where(Job.id == job_id))
            if row is None or row.status != JobStatus.validating_files or row.claimed_by != self.replica_id:
                return  # cancelled meanwhile (or taken over by another replica)
            release(row)
            row.runtime = self.backend.runtime()
            jobstate.queue(row)
            for summary in summaries:
                add_event(s, row.id, summary)
            add_event(s, row.id, f"Files validated, moving {what} to queued state")

        self.db.transaction(queue)

    def _memory_estimate(
        self, job: Job, plan: TrainingPlan, scan: FileScan | None, hw: hardware.Hardware
    ) -> Callable[[str], estimates.Estimate | None]:
        """The job's memory on the trainer's hardware in the precision the hardware check settles on, for that check:
        whether the job checkpoints its activations, and whether a full fine-tuning fits (docs/adapters.md)."""

        def memory(precision: str) -> estimates.Estimate | None:
            folder = self.settings.base_model_paths().get(job.base_model)
            if scan is None or not scan.tokens or folder is None:
                return None
            # Full fine-tuning in fp16 keeps fp32 master weights; where the GPU's bf16 is unknown, count fp32.
            held = "fp32" if plan.adapter == "full" and precision != "bf16" else precision
            try:
                gpu_type = self.settings.gpu_type if hw.gpu else "cpu"
                return estimates.estimate_for_scan(
                    estimates.model_shape(Path(folder)),
                    scan.tokens,
                    scan.trained,
                    plan,
                    gpu_type,
                    held,
                    generation=self.settings.trainer_generation,
                )
            except (OSError, ValueError):
                log.warning("no memory estimate for a job on %s", job.base_model, exc_info=True)
                return None

        return memory

    def _estimate(self, s: Session, job: Job, scan: FileScan | None, plan: TrainingPlan) -> estimates.Estimate | None:
        """How long the job will take on TUNERY_GPU_TYPE with its method, adapter and precision, its judge models'
        work included (None when the file's tokens were not counted)."""
        bases = self.settings.base_model_paths()
        folder = bases.get(job.base_model)
        if scan is None or not scan.tokens or folder is None:
            return None
        judges = {}
        for name in judge_names(job):  # a judge gone by now is not counted: the job fails at its launch
            found = resolve_usable(s, job.organization_id, job.project_id, name, bases)
            if found is not None:
                judges[name] = found.base_path
        try:
            shape = estimates.model_shape(Path(folder))
            loads = estimates.judge_loads_of(plan, judges)
            return estimates.estimate_for_scan(
                shape,
                scan.tokens,
                scan.trained,
                plan,
                self.settings.gpu_type,
                judges=loads,
                generation=self.settings.trainer_generation,
            )
        except (OSError, ValueError):
            log.warning("no estimate for a job on %s", job.base_model, exc_info=True)
            return None
