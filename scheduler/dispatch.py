"""Dispatch: claiming queued jobs within each project's quota, writing their JobSpecs and starting their runs."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from scheduler.backends import LaunchRefused
from scheduler.claims import Claims
from scheduler.context import SchedulerContext, SchedulerPart
from scheduler.preprocess import cosine_metric, job_files, judge_names, parent_model_prefix
from scheduler.quota import quota_decision
from scheduler.runs import TrainerLogs, fail, fail_in
from scheduler.specs import build_spec
from tunery import ids, jobstate, quotas
from tunery.db import Job, Project
from tunery.db.ops import add_event, now
from tunery.integrations import integrations_spec, run_secrets
from tunery.jobspec import EmbeddingSpec, JobSpec, JudgeSpec, broker_url
from tunery.jobstate import EVAL_FILE_PARAM, ErrorCode, JobError, JobKind, JobStatus
from tunery.sharing import resolve_usable

log = logging.getLogger("tunery.scheduler")

# Why a queued job cannot be launched when its inputs are gone.
DELETED_INPUT = (
    "The training file (or the mix file, or the fine-tuned model the job starts from) was deleted, or the model is "
    "no longer shared with the job's project."
)
DELETED_EVALUATION_INPUT = (
    "The file to evaluate (or the reference file, or the model) was deleted, or the model is no longer shared with "
    "the evaluation's project."
)
DELETED_EXPORT_INPUT = "The model to export was deleted, or it is no longer shared with the export's project."
# The error of a job whose inputs are gone, by kind.
INPUT_GONE = {
    JobKind.fine_tune: JobError(ErrorCode.invalid_training_file, DELETED_INPUT, "training_file"),
    JobKind.evaluation: JobError(ErrorCode.invalid_file, DELETED_EVALUATION_INPUT, EVAL_FILE_PARAM),
    JobKind.export: JobError(ErrorCode.model_not_available, DELETED_EXPORT_INPUT, "model"),
}
LAUNCHES_PER_PASS = 32  # jobs a backend that queues its own runs (Kubernetes) is given in one scheduler pass


class Dispatcher(SchedulerPart):
    """Launches queued jobs: claims them (in the fair queue's order) up to the free run slots and starts their
    trainer runs."""

    def __init__(self, ctx: SchedulerContext, claims: Claims, logs: TrainerLogs, reporting_address: str):
        super().__init__(ctx)
        self.claims = claims
        self.logs = logs
        self.reporting_address = reporting_address
        self._quota_noted: set[str] = set()  # jobs whose wait for quota was already said in an event

    def launch_queued(self) -> None:
        """Claim queued jobs, in the fair queue's order (tunery/quotas.py: round-robin across projects, by priority
        then age within one), up to this replica's free run slots and start their runs, within each project's limits
        (running jobs and GPUs: its own, or TUNERY_PROJECT_MAX_CONCURRENT_JOBS and TUNERY_PROJECT_GPU_QUOTA),
        checked before a run is created. Claims skip rows another replica holds locked, so no job is launched twice;
        on PostgreSQL the replicas' claims run one at a time (a transaction-scoped advisory lock), each counting the
        running jobs the others committed, so no project runs past its limit either."""
        with self.db.session() as s:
            mine = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.status == JobStatus.running, Job.claimed_by == self.replica_id)
            )
        # A cluster queues its own pods; the local runner has one machine.
        free = LAUNCHES_PER_PASS if self.backend.adopts_runs else self.settings.max_concurrent_runs - (mine or 0)
        if free <= 0:
            return
        waits: list[tuple[str, str]] = []

        def claim(s: Session) -> list[tuple[str, str, JobSpec, dict[str, Any] | None, dict[str, str]]]:
            waits.clear()
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext('tunery-dispatch'))"))
            counts = quotas.running_by_project(s)
            # Locked rows are being claimed by another replica: skip them rather than wait and launch them twice.
            queued = list(s.scalars(quotas.queued_jobs().order_by(Job.pk).with_for_update(skip_locked=True)))
            projects = {job.project_id for job in queued}
            rows = s.scalars(select(Project).where(Project.id.in_(projects))) if projects else ()
            limits = {p.id: quotas.ProjectLimits.of(p, self.settings) for p in rows}
            claimed: list[tuple[str, str, JobSpec, dict[str, Any] | None, dict[str, str]]] = []
            for job in quotas.fair_order(queued, counts):
                if len(claimed) >= free:
                    break
                # Snapshotted when the job was queued; a job queued before runtimes were stored takes today's.
                runtime = job.runtime or self.backend.runtime()
                gpus = self.backend.gpus_per_run(runtime)
                running = counts.get(job.project_id, 0)
                decision = quota_decision(
                    limits.get(job.project_id) or quotas.ProjectLimits.defaults(self.settings),
                    running_jobs=running,
                    gpus_in_use=running * gpus,
                    gpus_needed=gpus,
                )
                if decision.verdict == "refuse":
                    fail_in(s, job, JobError(ErrorCode.quota_exceeded, decision.message))
                    continue
                if decision.verdict == "wait":
                    waits.append((job.id, decision.message))
                    continue
                token = ids.run_token()
                spec = self._spec(s, job)
                if not isinstance(spec, JobSpec):  # an input gone (None), or a judge gone (its error)
                    fail_in(s, job, spec or INPUT_GONE[JobKind(job.kind)])
                    continue
                self.store.put_bytes(spec.spec_key(), spec.model_dump_json(indent=2).encode())
                job.run_token = ids.token_digest(token)  # the token itself goes to the trainer alone
                job.runtime = runtime
                job.attempts += 1
                jobstate.start(job, now())
                self.claims.claim(job)
                add_event(s, job.id, "Fine-tuning job started")
                # The project's secrets its integrations read (a W&B API key): for this run's trainer alone.
                claimed.append((job.id, token, spec, runtime, run_secrets(s, job)))
                counts[job.project_id] = running + 1
            return claimed

        # The jobs are marked running (committed) first, then their trainers start and their handles are recorded.
        for job_id, token, spec, runtime, secrets in self.db.transaction(claim):
            self._quota_noted.discard(job_id)
            self._start_run(job_id, token, spec, runtime, secrets)
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

    def _spec(self, s: Session, job: Job) -> JobSpec | JobError | None:
        """The JobSpec of the job's next run (scheduler.specs), with its files, parent model and judge models looked
        up; None when one of them was deleted, the job's error when a judge model is gone for its project."""
        judges: dict[str, JudgeSpec] = {}
        bases = self.settings.base_model_paths()
        for name, where in judge_names(job).items():
            found = resolve_usable(s, job.organization_id, job.project_id, name, bases)
            if found is None:
                return JobError(
                    ErrorCode.model_not_available,
                    f"The judge model `{name}` of the job's score_model grader ('{where}') was deleted, is no longer "
                    "shared with the job's project, or its base model is no longer served.",
                    f"{where}.model",
                )
            judges[name] = JudgeSpec(
                model=name,
                base_model=found.base_name,
                base_model_path=found.base_path,
                adapter_prefix=found.adapter_prefix,
            )
        embedding = None
        cosine_at = cosine_metric(job)
        if cosine_at is not None:
            configured = self.settings.embedding_model_path()
            if configured is None:
                return JobError(
                    ErrorCode.model_not_available,
                    f"The cosine metric of the job's grader ('{cosine_at}') needs an embedding model, and this server "
                    "no longer has one configured (TUNERY_EMBEDDING_MODEL).",
                    f"{cosine_at}.evaluation_metric",
                )
            embedding = EmbeddingSpec(model=configured[0], path=configured[1])
        files = job_files(s, job)
        parent_prefix = None
        if job.model != job.base_model:  # fine-tuning a fine-tuned model: continue from its adapter
            # The job's project's own model, or one shared with it (a permission deleted since: gone for it).
            parent_prefix = parent_model_prefix(s, job)
            if parent_prefix is None:
                return None
        # A brokered trainer reaches its objects through the scheduler it reports to (scheduler/object_access.py).
        brokered = self.settings.trainers_brokered
        return build_spec(
            job,
            files,
            parent_prefix,
            base_model_path=bases[job.base_model],
            store_url=broker_url(self.reporting_address, job.id) if brokered else self.store.url,
            reporting_address=self.reporting_address,
            device=self.settings.trainer_device,
            generation=self.settings.trainer_generation,
            judges=judges,
            embedding_model=embedding,
            integrations=integrations_spec(
                job.integrations,
                wandb_mode=self.settings.wandb_mode,
                wandb_base_url=self.settings.wandb_base_url,
                allow_private=self.settings.integrations_allow_private,
            ),
        )

    def _start_run(
        self, job_id: str, token: str, spec: JobSpec, runtime: dict[str, Any] | None, secrets: dict[str, str]
    ) -> None:
        try:
            ref = f"{spec.object_store}#{spec.spec_key()}"
            handle = self.backend.launch(job_id, ref, self.logs.path(job_id), runtime, token, secrets)
        except LaunchRefused as e:
            log.warning("the trainer of %s was not started: %s", job_id, e.message)
            fail(self.db, job_id, JobError(e.code, e.message))
            return
        except Exception as e:
            log.exception("launching the trainer of %s failed", job_id)
            fail(self.db, job_id, JobError(ErrorCode.server_error, f"The trainer could not start: {e}"))
            return

        def record(s: Session) -> bool:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is None or job.run_token != ids.token_digest(token):
                return False  # cancelled (or failed) while starting: stop the new run
            job.run_handle = handle
            return True

        if not self.db.transaction(record):
            self.backend.cancel(handle)
            return
        self.metrics.runs_started.inc()
