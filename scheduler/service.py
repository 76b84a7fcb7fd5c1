"""The scheduler: validates files, resolves hyperparameters, launches queued jobs, watches and stops runs.

It is one loop (a thread in the embedded server) that works from the metadata store alone, so it picks up
where it left off after a restart.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.backends import Backend
from scheduler.validation import MIX_PARAM, check_file, file_error_code, file_report, report_key, status_details
from tunery import hyperparams, ids
from tunery.data import parse_jsonl
from tunery.db import Database, File, Job
from tunery.db.ops import TERMINAL, add_event, now
from tunery.jobspec import DataFile, DataOptions, JobSpec, MixSpec, ResolvedHyperparameters, mix_count
from tunery.settings import Settings
from tunery.storage import ObjectNotFound, ObjectStore
from tunery.uploads import sweep_expired as sweep_expired_uploads

log = logging.getLogger("tunery.scheduler")


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: ObjectStore,
        backend: Backend,
        reporting_address: str,
        log_dir: Path,
    ):
        self.settings = settings
        self.db = db
        self.store = store
        self.backend = backend
        self.reporting_address = reporting_address
        self.log_dir = log_dir
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Validation reads whole files: it runs beside the loop, so cancels and launches never wait for it.
        self._validation = ThreadPoolExecutor(max_workers=2, thread_name_prefix="validate")
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._validation.shutdown(wait=False, cancel_futures=True)
        self.backend.close()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self._wake.wait(self.settings.scheduler_poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        """One pass: stop cancelled runs, reap finished ones, validate new jobs, launch queued ones, expire
        uploads past their expiry."""
        self.stop_cancelled()
        self.reap()
        self.validate_uploaded_files()
        self.validate_pending()
        self.launch_queued()
        sweep_expired_uploads(self.db, self.store)

    # Start-up ----------------------------------------------------------------------------------
    def recover(self) -> None:
        """Runs left by a previous server process are gone: stop leftovers and queue their jobs again."""

        def requeue(s: Session) -> list[str]:
            handles = []
            for job in s.scalars(select(Job).where(Job.status == "running")):
                handles.append(job.run_handle or "")
                self._clear_run(job)
                job.status = "queued"
                add_event(s, job.id, "The control plane restarted: the job was queued again", level="warn")
            for job in s.scalars(select(Job).where(Job.status != "running", Job.run_handle.is_not(None))):
                handles.append(job.run_handle or "")
                job.run_handle = None
            return handles

        for handle in self.db.transaction(requeue):
            if handle:
                self.backend.cancel(handle)

    # Steps -------------------------------------------------------------------------------------
    @staticmethod
    def _clear_run(job: Job) -> None:
        job.run_handle = None
        job.run_token = None
        job.estimated_finish = None

    def _job_ids(self, *conditions) -> list[str]:  # type: ignore[no-untyped-def]
        with self.db.session() as s:
            return list(s.scalars(select(Job.id).where(*conditions).order_by(Job.pk)))

    def stop_cancelled(self) -> None:
        for job_id in self._job_ids(Job.cancel_requested.is_(True), Job.run_handle.is_not(None)):

            def take_handle(s: Session, job_id: str = job_id) -> str | None:
                job = s.scalar(select(Job).where(Job.id == job_id))
                if job is None or not job.run_handle:
                    return None
                handle = job.run_handle
                self._clear_run(job)
                return handle

            handle = self.db.transaction(take_handle)
            if handle:
                log.info("stopping run %s of cancelled job %s", handle, job_id)
                self.backend.cancel(handle)

    def reap(self) -> None:
        """Notice runs whose process ended: a run that never reported its outcome failed."""
        for job_id in self._job_ids(Job.run_handle.is_not(None), Job.cancel_requested.is_(False)):

            def check(s: Session, job_id: str = job_id) -> None:
                job = s.scalar(select(Job).where(Job.id == job_id))
                if job is None or not job.run_handle:
                    return
                st = self.backend.status(job.run_handle)
                if st.running:
                    return
                self._keep_log(job.id)
                job.run_handle = None
                if job.status != "running":
                    return  # it reported its outcome before exiting
                self._clear_run(job)
                tail = self._log_tail(job.id)
                job.status = "failed"
                job.finished_at = now()
                job.error = {
                    "code": "training_error",
                    "message": f"The trainer exited (code {st.exit_code}) before finishing."
                    + (f" Last output: {tail}" if tail else ""),
                    "param": None,
                }
                add_event(s, job.id, f"Fine-tuning job failed: {job.error['message']}", level="error")

            self.db.transaction(check)

    def validate_uploaded_files(self) -> None:
        """New training files: write each one's validation report and set its status (processed | error)."""
        with self.db.session() as s:
            pending = list(
                s.execute(
                    select(File.id, File.object_key).where(File.purpose == "fine-tune", File.status == "uploaded")
                )
            )
        for file_id, key in pending:
            self._in_background(file_id, self._validate_file, file_id, key)

    def _validate_file(self, file_id: str, key: str) -> None:
        try:
            result = parse_jsonl(
                self.store.iter_chunks(key),
                keep_records=False,
                max_line_bytes=self.settings.max_line_bytes,
                max_lines=self.settings.max_lines,
            )
            report = file_report(file_id, result, now())
        except ObjectNotFound:
            return  # deleted meanwhile
        except Exception:
            log.exception("validating file %s failed", file_id)
            report = {"status": "error", "internal": True}
        if not report.get("internal"):
            self.store.put_bytes(report_key(file_id), json.dumps(report).encode())

        def record(s: Session) -> None:
            f = s.scalar(select(File).where(File.id == file_id))
            if f is None:
                self.store.delete(report_key(file_id))
                return
            f.status = report["status"]
            f.status_details = (
                "The file could not be validated because of an internal error."
                if report.get("internal")
                else status_details(report)
            )

        self.db.transaction(record)

    def validate_pending(self) -> None:
        for job_id in self._job_ids(Job.status == "validating_files"):
            self._in_background(job_id, self._validate_job, job_id)

    def _validate_job(self, job_id: str) -> None:
        try:
            self._validate(job_id)
        except Exception:
            log.exception("validating job %s failed", job_id)
            self._fail(
                job_id,
                {
                    "code": "server_error",
                    "param": None,
                    "message": "The files could not be validated because of an internal error.",
                },
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

    def _fail(self, job_id: str, error: dict[str, str | None]) -> None:
        def fail(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status in TERMINAL:
                return
            self._clear_run(job)
            job.status = "failed"
            job.error = error
            job.finished_at = now()
            add_event(s, job.id, f"Fine-tuning job failed: {error['message']}", level="error")

        self.db.transaction(fail)

    def _files(self, s: Session, job: Job) -> dict[str, File]:
        wanted = [job.training_file, *([job.validation_file] if job.validation_file else [])]
        mix = _data_options(job).get("mix")
        if mix:
            wanted.append(mix["file"])
        return {f.id: f for f in s.scalars(select(File).where(File.id.in_(wanted)))}

    def _validate(self, job_id: str) -> None:
        with self.db.session() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != "validating_files":
                return
            files = self._files(s, job)
        error: dict[str, str | None] | None = None
        n_train = n_mix = 0
        summaries: list[str] = []
        mix = _data_options(job).get("mix")
        to_check = [
            (job.training_file, "training_file"),
            (job.validation_file, "validation_file"),
            (mix["file"] if mix else None, MIX_PARAM),
        ]
        for file_id, param in to_check:
            if not file_id:
                continue
            f = files.get(file_id)
            if f is None:
                error = {"code": file_error_code(param), "message": f"File {file_id} was deleted.", "param": param}
                break
            check = check_file(
                self.store,
                f.object_key,
                f.id,
                param,
                method=job.method.get("type", "supervised"),
                max_line_bytes=self.settings.max_line_bytes,
                max_lines=self.settings.max_lines,
            )
            if check.error:
                error = check.error
                break
            summaries.append(check.summary(f.id, param))
            if param == "training_file":
                n_train = check.n_examples
            elif param == MIX_PARAM:
                n_mix = check.n_examples
        if error:
            self._fail(job_id, error)
            return

        def queue(s: Session) -> None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != "validating_files":
                return  # cancelled meanwhile
            cpu_only = self.settings.trainer_device == "cpu" or not _cuda_visible()
            # Mixed-in examples are part of the training set (before the trainer's own drops: an estimate).
            n_total = n_train + (min(n_mix, mix_count(n_train, mix["fraction"])) if mix else 0)
            hp = hyperparams.resolve(job.hyperparameters, n_total, cpu_only=cpu_only)
            job.hyperparameters = hp
            job.method = {"type": "supervised", "supervised": {"hyperparameters": hp}}
            job.total_steps = hyperparams.total_steps(n_total, hp["batch_size"], hp["n_epochs"])
            job.fine_tuned_model = ids.fine_tuned_model_name(
                job.base_model, self.settings.organization_slug, job.suffix, job.id
            )
            job.status = "queued"
            for summary in summaries:
                add_event(s, job.id, summary)
            add_event(
                s,
                job.id,
                "Files validated, moving job to queued state",
                data={"train_examples": n_total, "hyperparameters": hp},
            )

        self.db.transaction(queue)

    def launch_queued(self) -> None:
        with self.db.session() as s:
            running = s.query(Job).filter(Job.status == "running").count()
        free = self.settings.max_concurrent_runs - running
        if free > 0:
            for job_id in self._job_ids(Job.status == "queued")[:free]:
                self._launch(job_id)

    def _spec(self, s: Session, job: Job, token: str) -> JobSpec | None:
        files = self._files(s, job)
        train = files.get(job.training_file)
        if train is None:
            return None
        valid = files.get(job.validation_file or "")
        options = _data_options(job)
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
                learning_rate=hyperparams.LORA_BASE_LR * hp["learning_rate_multiplier"],
                max_seq_length=hyperparams.DEFAULT_MAX_SEQ_LENGTH,
            ),
            seed=job.seed,
            device=self.settings.trainer_device,
            object_store=self.store.url,
            output_prefix=f"jobs/{job.id}",
            reporting_address=self.reporting_address,
        )

    def _launch(self, job_id: str) -> None:
        """Mark the job running (committed first), then start its trainer and record the handle."""
        token = ids.run_token()

        def start(s: Session) -> JobSpec | None:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.status != "queued":
                return None
            spec = self._spec(s, job, token)
            if spec is None:
                return None
            self.store.put_bytes(spec.spec_key(), spec.model_dump_json(indent=2).encode())
            job.run_token = token
            job.attempts += 1
            job.status = "running"
            job.started_at = now()
            add_event(s, job.id, "Fine-tuning job started")
            return spec

        spec = self.db.transaction(start)
        if spec is None:
            with self.db.session() as s:
                job = s.scalar(select(Job).where(Job.id == job_id))
                missing = job is not None and job.status == "queued"
            if missing:
                self._fail(
                    job_id,
                    {
                        "code": "invalid_training_file",
                        "message": "The training file (or the mix file) was deleted.",
                        "param": "training_file",
                    },
                )
            return
        try:
            handle = self.backend.launch(job_id, f"{self.store.url}#{spec.spec_key()}", self.log_path(job_id))
        except Exception as e:
            log.exception("launching the trainer of %s failed", job_id)
            self._fail(job_id, {"code": "server_error", "param": None, "message": f"The trainer could not start: {e}"})
            return

        def record(s: Session) -> bool:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.run_token != token:
                return False  # cancelled (or failed) while starting: stop the new run
            job.run_handle = handle
            return True

        if not self.db.transaction(record):
            self.backend.cancel(handle)

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


def _data_options(job: Job) -> dict[str, Any]:
    """The job's ``tunery.data`` options as stored (resolved at creation); empty when the job has none."""
    return dict(((job.extensions or {}).get("tunery") or {}).get("data") or {})


def _cuda_visible() -> bool:
    """Whether a GPU is visible, without importing torch (the control plane never does)."""
    import shutil

    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None
