"""The scheduler: validates files, resolves hyperparameters, launches queued jobs, watches and stops runs.

It is one loop (a thread in the embedded server) that works from the metadata store alone, so it picks up
where it left off after a restart.

Several replicas may run on one PostgreSQL database. Each has a replica id; whatever one takes (a queued job to
launch, a job or a file to validate, the run of a replica that stopped) it claims in one transaction that locks the
rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` and records itself in ``claimed_by``, so exactly one replica gets each.
A claim holds until ``lease_expires_at``; the replica renews it while it is alive (a heartbeat every third of
``TUNERY_SCHEDULER_LEASE_SECONDS``), and once it lapses another replica takes the job over: a run is queued again
(its trainer, stopped where it can be, is refused by the reporting service from then on), a validation starts again.
On SQLite (one writer) the row locks are no-ops and there is one replica, ``embedded``, which takes its own runs
back at once when it starts again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from scheduler import hardware
from scheduler.backends import Backend, LaunchRefused, RunStatus
from scheduler.expiry import ExpirySweep
from scheduler.quota import quota_decision
from scheduler.validation import (
    MIX_PARAM,
    check_scan,
    file_error_code,
    file_report,
    scan_stored,
    status_details,
    token_summary,
)
from tunery import estimate as estimates
from tunery import hyperparams, ids, jobstate, servable
from tunery.db import Database, File, FineTunedModel, Job
from tunery.db.ops import add_event, now
from tunery.files import report_key
from tunery.filescan import FileScan, ScanOptions
from tunery.jobspec import (
    DataFile,
    DataOptions,
    JobSpec,
    LoraSpec,
    MixSpec,
    PreferenceSpec,
    ResolvedHyperparameters,
    TrainingMethod,
    mix_count,
)
from tunery.jobstate import OWNED, ErrorCode, JobError, JobStatus
from tunery.metrics import Metrics
from tunery.resume import latest_state
from tunery.settings import Settings
from tunery.storage import ObjectNotFound, ObjectStore
from tunery.uploads import sweep_expired as sweep_expired_uploads

if TYPE_CHECKING:
    from scheduler.leader import LeaderElector

log = logging.getLogger("tunery.scheduler")

# Why a queued job cannot be launched when its inputs are gone.
DELETED_INPUT = "The training file (or the mix file, or the fine-tuned model the job starts from) was deleted."
# Validation workers of one replica (whole files are read on them, beside the loop).
VALIDATION_WORKERS = 2
LAUNCHES_PER_PASS = 32  # jobs a backend that queues its own runs (Kubernetes) is given in one scheduler pass
SWEEP_SECONDS = 10.0  # how often the backend removes what finished runs left behind (scheduler.k8s: Jobs past TTL)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: ObjectStore,
        backend: Backend,
        reporting_address: str,
        log_dir: Path,
        leader: LeaderElector | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.leader = leader
        self.metrics = metrics or Metrics()
        self.db = db
        self.store = store
        self.backend = backend
        self.reporting_address = reporting_address
        self.log_dir = log_dir
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Validation reads whole files: it runs beside the loop, so cancels and launches never wait for it.
        self._validation = ThreadPoolExecutor(max_workers=VALIDATION_WORKERS, thread_name_prefix="validate")
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._quota_noted: set[str] = set()  # jobs whose wait for quota was already said in an event
        self._leading = leader is None
        self.replica_id = settings.resolved_scheduler_replica_id
        self.lease_seconds = settings.scheduler_lease_seconds
        self._last_heartbeat = float("-inf")
        self._last_sweep = float("-inf")
        self.file_expiry = ExpirySweep(db, store)

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.leader is None:
            self.recover()
        else:
            self.leader.start()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._validation.shutdown(wait=False, cancel_futures=True)
        if self.leader is not None:
            self.leader.stop()
        self.backend.close()
        # Validations are cheap to redo: another replica may take them at once. Runs stay claimed until the
        # lease lapses (a backend's runs may outlive this process; a restart under the same id takes them back).
        try:
            self.db.transaction(self._release_validations)
        except Exception:
            log.exception("could not release this replica's validation claims")

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._may_work():
                    with self.metrics.pass_seconds.time():
                        self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self._wake.wait(self.settings.scheduler_poll_seconds)
            self._wake.clear()

    def is_leading(self) -> bool:
        """Whether this replica launches and watches runs: always without leader election, else while it holds
        the Lease."""
        return self.leader is None or self.leader.is_leader()

    def _may_work(self) -> bool:
        """Without leader election, always; with it, only while this replica holds the Lease. A replica that
        becomes the leader first recovers (adopts the runs of the previous leader)."""
        if self.leader is None:
            self.metrics.leader.set(1)
            return True
        self.metrics.leader.set(1 if self.leader.is_leader() else 0)
        if not self.leader.is_leader():
            if self._leading:
                log.warning("lost the scheduler lease: not launching or watching runs")
            self._leading = False
            return False
        if not self._leading:
            log.info("this replica leads the scheduler: recovering runs")
            self.recover()
            self._leading = True
        return True

    def tick(self) -> None:
        """One pass: renew claims (and take over lapsed ones), stop cancelled runs, reap finished ones, validate
        new files and jobs, launch queued ones, expire uploads and delete files past their expiry."""
        self.heartbeat()
        self.stop_cancelled()
        self.reap()
        self.validate_uploaded_files()
        self.validate_pending()
        self.launch_queued()
        sweep_expired_uploads(self.db, self.store)
        self.file_expiry.run()
        self.sweep_finished_runs()

    def sweep_finished_runs(self, force: bool = False) -> None:
        """Let the backend remove what finished runs left behind (Kubernetes: Jobs past their TTL), at most every
        SWEEP_SECONDS. Runs still recorded on any job are spared: their end has not been taken in yet."""
        t = time.monotonic()
        if not force and t - self._last_sweep < SWEEP_SECONDS:
            return
        self._last_sweep = t
        with self.db.session() as s:
            active = {h for h in s.scalars(select(Job.run_handle).where(Job.run_handle.is_not(None))) if h}
        try:
            self.metrics.runs_swept.inc(self.backend.sweep(active))
        except Exception:
            log.warning("could not sweep finished runs", exc_info=True)

    # Claims --------------------------------------------------------------------------------------
    def _claim(self, row: Job | File) -> None:
        row.claimed_by = self.replica_id
        row.lease_expires_at = now() + self.lease_seconds

    @staticmethod
    def _lapsed(model: type[Job] | type[File], t: int) -> ColumnElement[bool]:
        """Rows nobody holds: never claimed, released, or claimed by a replica that stopped renewing its claim."""
        return or_(model.claimed_by.is_(None), model.lease_expires_at.is_(None), model.lease_expires_at < t)

    def heartbeat(self, force: bool = False) -> None:
        """Renew this replica's claims and take over lapsed ones; at most every third of the lease."""
        t = time.monotonic()
        if not force and t - self._last_heartbeat < self.lease_seconds / 3:
            return
        until = now() + self.lease_seconds

        def renew(s: Session) -> None:
            # Plain UPDATEs: the lease is no part of the job's optimistic version.
            s.execute(
                update(Job)
                .where(Job.claimed_by == self.replica_id, or_(Job.status.in_(OWNED), Job.run_handle.is_not(None)))
                .values(lease_expires_at=until)
                .execution_options(synchronize_session=False)
            )
            s.execute(
                update(File)
                .where(File.claimed_by == self.replica_id, File.status == "uploaded")
                .values(lease_expires_at=until)
                .execution_options(synchronize_session=False)
            )

        self.db.transaction(renew)
        self._last_heartbeat = t
        self.take_over()

    def take_over(self, *, own: bool = False) -> int:
        """Runs whose replica stopped renewing its claim are gone: stop what is left and queue the jobs again.
        With ``own``, this replica's own runs from before it (re)started too. Returns how many jobs were queued."""
        t = now()
        gone = self._lapsed(Job, t)
        if own:
            gone = or_(gone, Job.claimed_by == self.replica_id)

        def requeue(s: Session) -> tuple[list[str], int]:
            handles, queued = [], 0
            q = (
                select(Job)
                .where(or_(Job.status == JobStatus.running, Job.run_handle.is_not(None)), gone)
                .order_by(Job.pk)
                .with_for_update(skip_locked=True)
            )
            for job in s.scalars(q):
                if job.status == JobStatus.running and self.backend.adopts_runs:
                    adopted = self.backend.adopt(job.id, job.run_handle)
                    if adopted:  # the run outlives its scheduler (a Kubernetes Job): this replica watches it now
                        job.run_handle = adopted
                        self._claim(job)
                        add_event(s, job.id, "The scheduler restarted and adopted the running trainer run")
                        continue
                handles.append(job.run_handle or "")
                if job.status != JobStatus.running:
                    self._release(job)  # finished, cancelled or paused; only its handle was left
                    job.run_handle = None
                    if job.pause_requested:
                        jobstate.pause_done(job)
                    continue
                mine = job.claimed_by == self.replica_id
                self._clear_run(job)
                jobstate.requeue(job)
                queued += 1
                add_event(
                    s,
                    job.id,
                    "The control plane restarted: the job was queued again"
                    if mine
                    else "The scheduler running the job stopped: the job was queued again",
                    level="warn",
                    data={"previous_scheduler": None if mine else job.claimed_by},
                )
            if own:  # validations this replica had started before it stopped: anyone may take them again
                self._release_validations(s)
            return handles, queued

        handles, queued = self.db.transaction(requeue)
        for handle in handles:
            if handle:
                self.backend.cancel(handle)
        if queued:
            log.warning("queued %d job(s) again whose scheduler stopped", queued)
        return queued

    def _release_validations(self, s: Session) -> None:
        for model, status in ((Job, JobStatus.validating_files), (File, "uploaded")):
            s.execute(
                update(model)
                .where(model.claimed_by == self.replica_id, model.status == status)
                .values(claimed_by=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    # Start-up ----------------------------------------------------------------------------------
    def recover(self) -> None:
        """Runs left by this replica's previous process, or by replicas whose claims lapsed, are gone: stop
        leftovers and queue their jobs again. Runs of live replicas are left alone."""
        self.take_over(own=True)
        self.heartbeat(force=True)

    # Steps -------------------------------------------------------------------------------------
    @staticmethod
    def _release(job: Job | File) -> None:
        job.claimed_by = None
        job.lease_expires_at = None

    @classmethod
    def _clear_run(cls, job: Job) -> None:
        job.run_handle = None
        job.run_token = None
        job.estimated_finish = None
        cls._release(job)

    def _job_ids(self, *conditions) -> list[str]:  # type: ignore[no-untyped-def]
        with self.db.session() as s:
            return list(s.scalars(select(Job.id).where(*conditions).order_by(Job.pk)))

    def stop_cancelled(self) -> None:
        # Only the replica that launched a run can stop it (a local process is a child of that replica).
        mine = Job.claimed_by == self.replica_id
        for job_id in self._job_ids(Job.cancel_requested.is_(True), Job.run_handle.is_not(None), mine):

            def take_handle(s: Session, job_id: str = job_id) -> str | None:
                job = s.scalar(select(Job).where(Job.id == job_id))
                if job is None or not job.run_handle or job.claimed_by != self.replica_id:
                    return None
                handle = job.run_handle
                self._clear_run(job)
                return handle

            handle = self.db.transaction(take_handle)
            if handle:
                log.info("stopping run %s of cancelled job %s", handle, job_id)
                self.backend.cancel(handle)

    def reap(self) -> None:
        """Notice this replica's runs whose process ended: a run that never reported its outcome failed. What the
        backend says about a run still going (a pod waiting for GPUs, an image that cannot be pulled) becomes job
        events."""
        with self.db.session() as s:
            runs = list(
                s.execute(
                    select(Job.id, Job.run_handle)
                    .where(
                        Job.run_handle.is_not(None),
                        Job.cancel_requested.is_(False),
                        Job.claimed_by == self.replica_id,
                    )
                    .order_by(Job.pk)
                )
            )
        for job_id, handle in runs:
            assert handle is not None
            # Asked once, outside the transaction: a retried transaction must not lose the run's new events.
            st = self.backend.status(handle)
            if st.running and not st.events:
                continue

            def check(s: Session, job_id: str = job_id, handle: str = handle, st: RunStatus = st) -> None:
                job = s.scalar(select(Job).where(Job.id == job_id))
                if job is None or job.run_handle != handle or job.claimed_by != self.replica_id:
                    return
                if job.status == JobStatus.running:
                    for ev in st.events:
                        add_event(s, job.id, ev.message, level=ev.level, data=ev.data)
                if st.running:
                    return
                self._keep_log(job.id)
                job.run_handle = None
                if job.pause_requested:
                    self.on_paused(s, job)
                    return
                if job.status != JobStatus.running:
                    self._release(job)
                    return  # it reported its outcome before exiting
                if run_crashed(st):
                    self.on_crash(s, job, st, handle)
                    return
                self._fail_run(s, job, st)

            self.db.transaction(check)

    def _fail_run(self, s: Session, job: Job, st: RunStatus) -> None:
        tail = self._log_tail(job.id)
        message = st.error or f"The trainer exited (code {st.exit_code}) before finishing."
        self._fail_in(s, job, JobError(ErrorCode.training_error, message + (f" Last output: {tail}" if tail else "")))

    def on_crash(self, s: Session, job: Job, st: RunStatus, handle: str) -> None:
        """A run that ended without the trainer's say (killed, pod lost or evicted, OOM), or that was preempted
        (SIGTERM: it saved its state first). The job is queued again and its next run resumes from the last
        complete checkpoint (or starts over when there is none), up to TUNERY_MAX_RUN_RETRIES restarts after
        crashes; preemptions are not counted. The run's leftovers (a Job whose controller would start a fresh pod)
        are removed."""
        self.backend.cancel(handle)
        state = latest_state(self.store, f"jobs/{job.id}")
        where = f"checkpoint step {state.step}" if state is not None else "the beginning (no complete checkpoint)"
        data = {"exit_code": st.exit_code, "resume_step": state.step if state else None}
        if st.exit_code == EXIT_PREEMPTED and not st.crashed:
            self.metrics.run_restarts.labels("preemption").inc()
            self._requeue(job)
            add_event(s, job.id, f"The trainer was preempted and saved its state; resuming from {where}", data=data)
            return
        reason = st.error or f"exit code {st.exit_code}"
        limit = self.settings.max_run_retries
        if job.crash_restarts >= limit:
            add_event(s, job.id, f"The trainer stopped unexpectedly ({reason})", level="error", data=data)
            message = (
                f"The trainer stopped unexpectedly ({reason}) after {limit} restart(s); giving up "
                "(TUNERY_MAX_RUN_RETRIES)."
            )
            self._fail_run(s, job, dataclasses.replace(st, error=message))
            return
        job.crash_restarts += 1
        self.metrics.run_restarts.labels("crash").inc()
        self._requeue(job)
        add_event(
            s,
            job.id,
            f"The trainer stopped unexpectedly ({reason}); restarting from {where} "
            f"(attempt {job.crash_restarts + 1} of {limit + 1})",
            level="warn",
            data={**data, "attempt": job.crash_restarts + 1, "max_attempts": limit + 1},
        )

    def on_paused(self, s: Session, job: Job) -> None:
        """The run of a paused job ended (it saved its state at a step boundary, or died meanwhile)."""
        self._clear_run(job)
        jobstate.pause_done(job)
        if job.status != JobStatus.paused:
            return  # resumed (queued) or cancelled while it was stopping
        state = latest_state(self.store, f"jobs/{job.id}")
        where = f"at step {state.step}" if state is not None else "before its first checkpoint"
        add_event(
            s,
            job.id,
            f"Fine-tuning job paused {where}",
            data={"step": state.step if state else None, "total_steps": job.total_steps},
        )

    def _requeue(self, job: Job) -> None:
        self._clear_run(job)
        jobstate.requeue(job)

    def validate_uploaded_files(self) -> None:
        """New training files: write each one's validation report and set its status (processed | error)."""

        def claim(s: Session) -> list[tuple[str, str]]:
            q = (
                select(File)
                .where(File.purpose == "fine-tune", File.status == "uploaded", self._lapsed(File, now()))
                .order_by(File.pk)
                .limit(self._free_workers())
                .with_for_update(skip_locked=True)
            )
            files = list(s.scalars(q))
            for f in files:
                self._claim(f)
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
            self._release(f)
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
                .where(Job.status == JobStatus.validating_files, self._lapsed(Job, now()))
                .order_by(Job.pk)
                .limit(self._free_workers())
                .with_for_update(skip_locked=True)
            )
            jobs = list(s.scalars(q))
            for job in jobs:
                self._claim(job)
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
            self._fail(
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

    def _fail(self, job_id: str, error: JobError) -> None:
        def fail(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is not None and jobstate.allowed(job, jobstate.Transition.fail):  # not already over
                self._fail_in(s, job, error)

        self.db.transaction(fail)

    def _fail_in(self, s: Session, job: Job, error: JobError) -> None:
        self._clear_run(job)
        jobstate.fail(job, error, now())
        add_event(s, job.id, jobstate.failure_event(error), level="error")

    def _files(self, s: Session, job: Job) -> dict[str, File]:
        wanted = [file_id for _, file_id in job.input_files()]
        return {f.id: f for f in s.scalars(select(File).where(File.id.in_(wanted)))}

    def _validate(self, job_id: str) -> None:
        with self.db.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != JobStatus.validating_files:
                return
            files = self._files(s, job)
        error: JobError | None = None
        n_train = n_mix = 0
        train_scan: FileScan | None = None
        summaries: list[str] = []
        mix = job.tunery_options("data").get("mix")
        requested_len = job.tunery_options("training").get("max_seq_length")
        max_len = hyperparams.DEFAULT_MAX_SEQ_LENGTH if requested_len in (None, "auto") else int(requested_len)
        for param, file_id in job.input_files():
            f = files.get(file_id)
            if f is None:
                error = JobError(file_error_code(param), f"File {file_id} was deleted.", param)
                break
            # Again, against the job's model: its tokenizer's special tokens, token counts, over-length examples.
            model_folder = self.settings.base_model_paths().get(job.base_model)
            model = (job.base_model, model_folder) if model_folder else None
            scan = scan_stored(self.store, f.object_key, self.scan_options(model, max_len))
            check = check_scan(scan, f.id, param, method=job.method.get("type", "supervised"))
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
            self._fail(job_id, error)
            return

        def queue(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != JobStatus.validating_files or job.claimed_by != self.replica_id:
                return  # cancelled meanwhile (or taken over by another replica after this one's claim lapsed)
            self._release(job)
            cpu_only = self.settings.trainer_device == "cpu" or not _cuda_visible()
            # Mixed-in examples are part of the training set (before the trainer's own drops: an estimate).
            n_total = n_train + (min(n_mix, mix_count(n_train, mix["fraction"])) if mix else 0)
            requested = job.tunery_options("training")
            grad_accum = int(requested.get("gradient_accumulation_steps") or 1)
            hp = hyperparams.resolve(job.hyperparameters, n_total, cpu_only=cpu_only, grad_accum=grad_accum)
            training = hyperparams.resolve_training(requested, hp, n_total, has_validation=bool(job.validation_file))
            hw_check = self._check_hardware(job, training, train_scan, hp, max_len)
            if hw_check.error is not None:
                self._fail_in(s, job, hw_check.error)
                return
            if self.settings.serving_backend == "vllm":  # the model must be one vLLM can load (docs/serving.md)
                problem = servable.training_problem(training, self.settings.vllm_max_lora_rank)
                if problem is not None:
                    self._fail_in(s, job, JobError(ErrorCode.unservable_adapter, problem.message, problem.param))
                    return
            training["precision"] = hw_check.precision
            tunery_ext = {**((job.extensions or {}).get("tunery") or {}), "training": training}
            job.extensions = {**(job.extensions or {}), "tunery": tunery_ext}  # a new dict: JSON is not tracked
            job.hyperparameters = hp
            job.method = _resolved_method(job.method, hp)
            job.total_steps = hyperparams.total_steps(n_total, hp["batch_size"], hp["n_epochs"])
            estimate = self._estimate(job, train_scan, hp, max_len, training)
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
                data={"train_examples": n_total, "hyperparameters": hp, "training": training},
            )

        self.db.transaction(queue)

    def _check_hardware(
        self, job: Job, training: dict[str, Any], scan: FileScan | None, hp: dict[str, Any], max_len: int
    ) -> hardware.HardwareCheck:
        """The job's adapter and precision against its trainer's hardware (docs/adapters.md)."""
        cluster_gpus = self.backend.gpus_per_run() if self.backend.adopts_runs else None
        hw = hardware.detect(self.settings.trainer_device, self.settings.gpu_type, cluster_gpus, _cuda_visible())
        full = None
        folder = self.settings.base_model_paths().get(job.base_model)
        if training.get("adapter") == "full" and scan is not None and scan.tokens and folder is not None:
            precision = training.get("precision", "auto")
            precision = "fp32" if not hw.gpu or precision in ("auto", "fp16") else precision
            try:
                shape = estimates.model_shape(Path(folder))
                gpu_type = self.settings.gpu_type if hw.gpu else "cpu"
                full = estimates.estimate_for_scan(
                    shape, scan.tokens, scan.trained, hp, max_len, gpu_type, adapter="full", precision=precision
                )
            except (OSError, ValueError):
                log.warning("no memory estimate for a full fine-tuning of %s", job.base_model, exc_info=True)
        return hardware.check(training, hw, full)

    def _estimate(
        self, job: Job, scan: FileScan | None, hp: dict[str, Any], max_len: int, training: dict[str, Any]
    ) -> estimates.Estimate | None:
        """How long the job will take on TUNERY_GPU_TYPE with its trainer, adapter and precision (None when the
        file's tokens were not counted)."""
        folder = self.settings.base_model_paths().get(job.base_model)
        if scan is None or not scan.tokens or folder is None:
            return None
        try:
            shape = estimates.model_shape(Path(folder))
            return estimates.estimate_for_scan(
                shape,
                scan.tokens,
                scan.trained,
                hp,
                max_len,
                self.settings.gpu_type,
                adapter=training.get("adapter", "lora"),
                lora_r=int((training.get("lora") or {}).get("r", 16)),
                precision=training.get("precision"),
                trainer=_trainer_method(job)[0],
            )
        except (OSError, ValueError):
            log.warning("no estimate for a job on %s", job.base_model, exc_info=True)
            return None

    def launch_queued(self) -> None:
        """Claim queued jobs (oldest first) up to this replica's free run slots and start their runs, within each
        project's limits: TUNERY_PROJECT_MAX_CONCURRENT_JOBS and TUNERY_PROJECT_GPU_QUOTA are checked before a run
        is created. Claims skip rows another replica holds locked, so no job is launched twice."""
        with self.db.session() as s:
            running_by_project: dict[str, int] = {}
            for (project,) in s.execute(select(Job.project_id).where(Job.status == JobStatus.running)):
                running_by_project[project] = running_by_project.get(project, 0) + 1
            mine = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.status == JobStatus.running, Job.claimed_by == self.replica_id)
            )
        # A cluster queues its own pods; the local runner has one machine.
        free = LAUNCHES_PER_PASS if self.backend.adopts_runs else self.settings.max_concurrent_runs - (mine or 0)
        if free <= 0:
            return
        gpus = self.backend.gpus_per_run()
        waits: list[tuple[str, str]] = []

        def claim(s: Session) -> list[tuple[str, str, JobSpec]]:
            waits.clear()
            counts = dict(running_by_project)
            # Locked rows are being claimed by another replica: skip them rather than wait and launch them twice.
            # A job resumed while its paused run still saves its state waits until that run is reaped.
            q = (
                select(Job)
                .where(Job.status == JobStatus.queued, Job.run_handle.is_(None))
                .order_by(Job.pk)
                .with_for_update(skip_locked=True)
            )
            claimed: list[tuple[str, str, JobSpec]] = []
            for job in s.scalars(q):
                if len(claimed) >= free:
                    break
                running = counts.get(job.project_id, 0)
                decision = quota_decision(
                    self.settings, running_jobs=running, gpus_in_use=running * gpus, gpus_needed=gpus
                )
                if decision.verdict == "refuse":
                    self._fail_in(s, job, JobError(ErrorCode.quota_exceeded, decision.message))
                    continue
                if decision.verdict == "wait":
                    waits.append((job.id, decision.message))
                    continue
                token = ids.run_token()
                spec = self._spec(s, job, token)
                if spec is None:
                    self._fail_in(s, job, JobError(ErrorCode.invalid_training_file, DELETED_INPUT, "training_file"))
                    continue
                self.store.put_bytes(spec.spec_key(), spec.model_dump_json(indent=2).encode())
                job.run_token = token
                job.attempts += 1
                jobstate.start(job, now())
                self._claim(job)
                add_event(s, job.id, "Fine-tuning job started")
                claimed.append((job.id, token, spec))
                counts[job.project_id] = running + 1
            return claimed

        # The jobs are marked running (committed) first, then their trainers start and their handles are recorded.
        for job_id, token, spec in self.db.transaction(claim):
            self._quota_noted.discard(job_id)
            self._start_run(job_id, token, spec)
        for job_id, message in waits:
            self._note_wait(job_id, message)

    def _note_wait(self, job_id: str, message: str) -> None:
        if job_id in self._quota_noted:
            return
        self._quota_noted.add(job_id)

        def note(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is not None and job.status == JobStatus.queued:
                add_event(s, job_id, message)

        self.db.transaction(note)

    def _spec(self, s: Session, job: Job, token: str) -> JobSpec | None:
        files = self._files(s, job)
        train = files.get(job.training_file)
        if train is None:
            return None
        valid = files.get(job.validation_file or "")
        options = job.tunery_options("data")
        data: DataOptions | None = None
        if options:
            mix = None
            if options.get("mix"):
                mix_file = files.get(options["mix"]["file"])
                if mix_file is None:
                    return None
                mix = MixSpec(
                    file=DataFile(file_id=mix_file.id, key=mix_file.object_key, sha256=mix_file.sha256),
                    fraction=options["mix"]["fraction"],
                )
            data = DataOptions(
                drop_duplicates=options.get("drop_duplicates", False),
                long_examples=options.get("long_examples", "truncate"),
                mix=mix,
            )
        hp = job.hyperparameters
        training = job.tunery_options("training")
        if training.get("max_seq_length") in (None, "auto"):  # queued before the options existed: defaults
            # (the trainer caps the checkpoint and evaluation counts at its own number of steps)
            training = hyperparams.resolve_training(training, hp, 10**9, has_validation=valid is not None)
        lora = training["lora"]
        trainer, preference = _trainer_method(job)
        init_prefix = None
        if job.model != job.base_model:  # fine-tuning a fine-tuned model: continue from its adapter
            parent = s.scalar(
                select(FineTunedModel).where(
                    FineTunedModel.id == job.model,
                    FineTunedModel.organization_id == job.organization_id,
                    FineTunedModel.project_id == job.project_id,
                )
            )
            if parent is None:
                return None
            init_prefix = parent.object_prefix
        assert job.fine_tuned_model
        return JobSpec(
            job_id=job.id,
            run_token=token,
            organization_id=job.organization_id,
            project_id=job.project_id,
            base_model=job.base_model,
            base_model_path=self.settings.base_model_paths()[job.base_model],
            fine_tuned_model=job.fine_tuned_model,
            training_file=DataFile(file_id=train.id, key=train.object_key, sha256=train.sha256),
            validation_file=DataFile(file_id=valid.id, key=valid.object_key, sha256=valid.sha256) if valid else None,
            data=data,
            hyperparameters=ResolvedHyperparameters(
                n_epochs=hp["n_epochs"],
                batch_size=hp["batch_size"],
                learning_rate_multiplier=hp["learning_rate_multiplier"],
                learning_rate=hyperparams.base_learning_rate(training.get("adapter", "lora"), trainer)
                * hp["learning_rate_multiplier"],
                max_seq_length=training["max_seq_length"],
                warmup_ratio=training["warmup_ratio"] or 0.0,
                warmup_steps=training["warmup_steps"],
                lr_scheduler=training["lr_scheduler_type"],
                weight_decay=training["weight_decay"],
                max_grad_norm=training["max_grad_norm"],
                gradient_accumulation_steps=training["gradient_accumulation_steps"],
                train_on_inputs=training["train_on_inputs"],
                n_checkpoints=training["n_checkpoints"],
                n_evals=training["n_evals"],
                packing=training["packing"],
            ),
            lora=LoraSpec(
                r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=lora["target_modules"]
            ),
            method=trainer,
            preference=preference,
            seed=job.seed,
            device=self.settings.trainer_device,
            adapter=training.get("adapter", "lora"),
            precision=training.get("precision", "auto"),
            init_adapter_prefix=init_prefix,
            object_store=self.store.url,
            output_prefix=f"jobs/{job.id}",
            reporting_address=self.reporting_address,
            # A job run before (paused, crashed, preempted, its scheduler gone) continues from its newest complete
            # checkpoint, if it has one.
            resume_from="latest" if job.attempts else None,
        )

    def _start_run(self, job_id: str, token: str, spec: JobSpec) -> None:
        try:
            handle = self.backend.launch(job_id, f"{self.store.url}#{spec.spec_key()}", self.log_path(job_id))
        except LaunchRefused as e:
            log.warning("the trainer of %s was not started: %s", job_id, e.message)
            self._fail(job_id, JobError(e.code, e.message))
            return
        except Exception as e:
            log.exception("launching the trainer of %s failed", job_id)
            self._fail(job_id, JobError(ErrorCode.server_error, f"The trainer could not start: {e}"))
            return

        def record(s: Session) -> bool:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.run_token != token:
                return False  # cancelled (or failed) while starting: stop the new run
            job.run_handle = handle
            return True

        if not self.db.transaction(record):
            self.backend.cancel(handle)
            return
        self.metrics.runs_started.inc()

    # Trainer logs ------------------------------------------------------------------------------
    def log_path(self, job_id: str) -> Path:
        return self.log_dir / f"{job_id}.log"

    def _keep_log(self, job_id: str) -> None:
        path = self.log_path(job_id)
        if path.is_file():
            self.store.put_file(f"jobs/{job_id}/trainer.log", path)

    def _log_tail(self, job_id: str, chars: int = 300) -> str:
        path = self.log_path(job_id)
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][-chars:] if lines else ""


# The trainer's exit code after a pause or a preemption (trainer/errors.py; the control plane never imports it).
EXIT_PREEMPTED = 4


def run_crashed(st: RunStatus) -> bool:
    """A run that ended without reporting its outcome is a crash (or a preemption), not a failure of the job, when
    it was killed from outside (a signal: negative or >= 128), preempted, or the backend says so; other exit codes
    (a bad command line, a refused run) fail the job."""
    code = st.exit_code
    return st.crashed or code is None or code < 0 or code >= 128 or code == EXIT_PREEMPTED


def _resolved_method(method: dict[str, Any] | None, hp: dict[str, Any]) -> dict[str, Any]:
    """The job's ``method`` with its hyperparameters resolved: its type kept, ``beta`` of a dpo job resolved."""
    method_type = (method or {}).get("type", "supervised")
    if method_type != "dpo":
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}
    requested = ((method or {}).get("dpo") or {}).get("hyperparameters") or {}
    return {"type": "dpo", "dpo": {"hyperparameters": {**hp, "beta": hyperparams.resolve_beta(requested.get("beta"))}}}


def _trainer_method(job: Job) -> tuple[TrainingMethod, PreferenceSpec | None]:
    """What the trainer runs for a job: ``supervised``, or a dpo job's preference trainer (``tunery.method``)."""
    method = job.method or {}
    if method.get("type") != "dpo":
        return "supervised", None
    options = ((job.extensions or {}).get("tunery") or {}).get("method") or {}
    trainer: TrainingMethod = options.get("trainer") or "dpo"
    requested = (method.get("dpo") or {}).get("hyperparameters") or {}
    return trainer, PreferenceSpec(beta=hyperparams.resolve_beta(requested.get("beta")))


def _cuda_visible() -> bool:
    """Whether a GPU is visible, without importing torch (the control plane never does)."""
    import shutil

    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None
