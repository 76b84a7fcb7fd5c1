"""Fine-tuning jobs: create one (after the checks it shares with the dry run, :mod:`api.services.prepare`), list,
retrieve, cancel, pause and resume them, list a job's events and checkpoints, and the dry run
(:mod:`api.services.estimates`).

A job is created ``validating_files``; the scheduler takes it from there (scheduler/). Cancel, pause and resume
are transitions of the job state machine (tunery/jobstate.py), each written in one transaction with its event, after
which the scheduler is woken to act on it. Pause (docs/resilience.md): a running job becomes ``paused`` at once; its
trainer is told in the reply to its next report, saves its full state at the next step boundary and exits. Resume:
a paused job goes back to ``queued``, and its next run continues from the newest complete checkpoint.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import BindParameter, ColumnElement, Connection, String, bindparam, exists, select
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.interfaces import ORMOption

from api.context import BOUND_TENANT, AppContext, BoundTenant, Tenant
from api.encoded import EncodedPage, Encoding
from api.errors import InvalidRequest, NotFound
from api.pagination import AnyRow, Pager, page
from api.protocol.jobs import (
    CheckpointMetrics,
    CheckpointTunery,
    CreateJob,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobError,
    FineTuningJobEstimate,
    FineTuningJobEvent,
    JobHyperparameters,
    JobIntegration,
    JobMethod,
    JobScheduling,
    JobTunery,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListJobCheckpointsRequest,
    ListJobEventsRequest,
    ListJobsRequest,
    ListPaginatedFineTuningJobsResponse,
)
from api.services import estimates
from api.services.prepare import job_integrations, prepare_job
from tunery import ids, jobstate
from tunery.audit import Actor, EventType, record
from tunery.db import Checkpoint, File, FineTunedModel, Job, JobEvent
from tunery.db.ops import add_event, now
from tunery.evalreport import EvalReport, ReportSummary
from tunery.jobstate import JobKind, JobStatus
from tunery.plan import PlanRequest
from tunery.quotas import queue_positions
from tunery.storage import ObjectNotFound

# ---- rows -> OpenAI's objects ------------------------------------------------------------------------------------
INTEGRATIONS: TypeAdapter[list[JobIntegration]] = TypeAdapter(list[JobIntegration])


def job_object(j: Job, queue_position: int | None = None) -> FineTuningJob:
    # Tunery's extensions (resolved, defaults filled in), only on jobs created with the field ``tunery``: a plain
    # OpenAI-shaped job has exactly OpenAI's fields. Every job stores ``tunery.training`` (and a dpo job
    # ``tunery.method``); ``tunery.data`` is stored exactly when the request had ``tunery`` (:func:`_extensions`;
    # before ``tunery.training`` existed, ``extensions`` itself was stored only then).
    tunery = (j.extensions or {}).get("tunery")
    return FineTuningJob(
        id=j.id,
        created_at=j.created_at,
        error=FineTuningJobError.model_validate(j.error) if j.error is not None else None,
        # The name is reserved when the job is queued (checkpoints use it) but shown only once it exists.
        fine_tuned_model=j.fine_tuned_model if j.status == JobStatus.succeeded else None,
        finished_at=j.finished_at,
        hyperparameters=JobHyperparameters.model_validate(j.hyperparameters),
        model=j.model,
        organization_id=j.organization_id,
        result_files=list(j.result_files or []),
        seed=j.seed,
        status=JobStatus(j.status),
        trained_tokens=j.trained_tokens,
        training_file=j.training_file,
        validation_file=j.validation_file,
        integrations=INTEGRATIONS.validate_python(j.integrations or []),
        estimated_finish=j.estimated_finish,
        method=JobMethod.model_validate(j.method),
        metadata=j.job_metadata,
        user_provided_suffix=j.suffix,
        tunery=_tunery(j, tunery, queue_position) if tunery is not None and "data" in tunery else None,
    )


def _tunery(j: Job, stored: dict[str, Any], queue_position: int | None) -> JobTunery:
    scheduling = JobScheduling(
        priority=j.priority or 0, queue_position=queue_position if j.status == JobStatus.queued else None
    )
    return JobTunery.model_validate({**stored, "scheduling": scheduling, "eval_report": j.eval_report})


def _shows_queue(j: Job) -> bool:
    """Whether the job's object carries its queue position (a queued job that asked for ``tunery``)."""
    return j.status == JobStatus.queued and "data" in ((j.extensions or {}).get("tunery") or {})


def job_objects(s: Session, jobs: list[Job]) -> list[FineTuningJob]:
    """The jobs' objects, with the queue positions of those that show them (the fair queue is read once)."""
    positions = queue_positions(s) if any(_shows_queue(j) for j in jobs) else {}
    return [job_object(j, positions.get(j.id)) for j in jobs]


def event_object(e: JobEvent | AnyRow) -> FineTuningJobEvent:
    """An event's object, from its ORM row or a row of :data:`EVENT_COLUMNS`."""
    return FineTuningJobEvent(
        id=e.id,
        created_at=e.created_at,
        level=e.level,  # type: ignore[arg-type]  # info | warn | error: tunery.db.ops.add_event's callers
        message=e.message,
        type=e.type,  # type: ignore[arg-type]  # message | metrics
        data=e.data or {},
    )


def checkpoint_object(c: Checkpoint, best: bool | None = None) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=c.id,
        created_at=c.created_at,
        fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
        fine_tuning_job_id=c.job_id,
        step_number=c.step_number,
        metrics=CheckpointMetrics.model_validate(c.metrics or {}),
        # Tunery's extensions: the checkpoint with the lowest validation loss (docs/adapters.md), its eval report.
        tunery=None
        if best is None and c.eval_report is None
        else CheckpointTunery(
            best=bool(best), eval_report=ReportSummary.model_validate(c.eval_report) if c.eval_report else None
        ),
    )


def best_checkpoint_step(metrics_by_step: list[tuple[int, dict[str, Any] | None]]) -> int | None:
    """The step of the checkpoint with the lowest ``valid_loss`` (the earliest on a tie); None without one."""
    best: tuple[float, int] | None = None
    for step, metrics in metrics_by_step:
        loss = (metrics or {}).get("full_valid_loss", (metrics or {}).get("valid_loss"))
        if isinstance(loss, int | float) and loss == loss and (best is None or (loss, step) < best):
            best = (float(loss), step)
    return best[1] if best else None


# What a job's object does not show, and a read of it need not load (a column read later loads then): the training
# plan and the runtime snapshot, the largest JSON of a job's row.
NOT_SHOWN = (defer(Job.plan), defer(Job.runtime))


def owned(t: Tenant | BoundTenant, kind: JobKind = JobKind.fine_tune) -> tuple[ColumnElement[bool], ...]:
    """The condition a job row of the tenant, of ``kind``, meets: the fine-tuning routes see fine-tuning jobs only
    (an evaluation, api/services/evaluations.py, is another kind of job and never one of OpenAI's). A
    :class:`BoundTenant` for a statement built once."""
    return (Job.organization_id == t.organization_id, Job.project_id == t.project_id, Job.kind == kind)


# The reads clients poll, built once (api/pagination.py's Pager) and run on a connection without the ORM
# (Database.read); their tenant bound to Tenant.params, the job's id to ``job_id``.
_OWNED = owned(BOUND_TENANT)
_JOB_ID = bindparam("job_id", type_=String())
_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_VERSION = select(Job.version).where(Job.id == _JOB_ID, *_OWNED)
_STATUS = select(Job.status).where(Job.id == _JOB_ID, *_OWNED)
_VERSIONS = Pager(Job, select(Job.id, Job.version).where(*_OWNED), columns=True)
# What an event's object shows: a page of events is read whole (an event's encoding is kept by its id alone).
EVENT_COLUMNS = (JobEvent.id, JobEvent.created_at, JobEvent.level, JobEvent.message, JobEvent.type, JobEvent.data)
_EVENTS = select(*EVENT_COLUMNS).where(JobEvent.job_id == _JOB_ID)
# The page of a job the tenant owns, in one statement (the job looked up once, uncorrelated); an empty page is told
# apart from a job it does not own afterwards, by _VERSION.
_EVENT_PAGES = Pager(JobEvent, _EVENTS.where(exists(select(Job.pk).where(Job.id == _JOB_ID, *_OWNED))), columns=True)
_EVENT_PAGES_AFTER = Pager(JobEvent, _EVENTS, newest_first=False, columns=True)
_JOBS = select(Job).where(Job.id.in_(_IDS)).options(*NOT_SHOWN)
_EVENT = select(JobEvent.pk).where(JobEvent.job_id == _JOB_ID, JobEvent.id == bindparam("event_id", type_=String()))


def find_job(s: Session, t: Tenant, job_id: str, *options: ORMOption) -> Job:
    """One of the tenant's jobs; NotFound when there is none."""
    job = s.scalar(select(Job).where(Job.id == job_id, *owned(t)).options(*options))
    if job is None:
        raise job_not_found(job_id)
    return job


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")


def _extensions(req: CreateJob, request: PlanRequest) -> dict[str, Any]:
    """What the job stores under ``extensions``: ``tunery.training`` always (resolved when the files are
    validated), ``tunery.data`` when the request has ``tunery`` (its presence is how :func:`job_object` knows the
    job asked for its extensions: only then does the job object carry ``tunery``), ``tunery.method`` for a dpo
    job."""
    out: dict[str, Any] = {"training": request.training.model_dump()}
    if req.tunery is not None:
        out = {"data": req.tunery.data.model_dump(), **out}
        if req.tunery.eval is not None:
            out["eval"] = req.tunery.eval.model_dump()
    if request.method_info().openai_type == "dpo":
        out["method"] = {"trainer": request.method}
    if request.reinforcement is not None:
        out["reinforcement"] = request.reinforcement.options.model_dump()
    return {"tunery": out}


class JobService:
    """The caller's fine-tuning jobs. Blocking (database; the dry run also the object store and a tokenizer): run
    it off the event loop."""

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor  # who the audit log says acted

    def _record(self, s: Session, type: EventType, job: Job, details: dict[str, Any] | None = None) -> None:
        record(
            s,
            type,
            self.actor,
            organization_id=job.organization_id,
            project_id=job.project_id,
            resource_id=job.id,
            details=details,
        )

    def create(self, req: CreateJob) -> FineTuningJob:
        """A new job, ``validating_files``: the scheduler validates its files, then queues it."""
        t = self.tenant
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        with self.ctx.db.session() as s:
            prepared = prepare_job(s, self.ctx, t, req)
            request = prepared.request
            job_id = ids.job_id()
            job = Job(
                id=job_id,
                organization_id=t.organization_id,
                project_id=t.project_id,
                created_at=now(),
                model=req.model,
                base_model=prepared.base_model,
                training_file=req.training_file,
                validation_file=req.validation_file,
                suffix=req.suffix,
                seed=seed,
                job_metadata=req.metadata,
                method=request.openai_method(),
                hyperparameters=request.openai_hyperparameters(),
                integrations=job_integrations(req, job_id),
                extensions=_extensions(req, request),
                result_files=[],
                attempts=0,
                priority=req.tunery.scheduling.priority if req.tunery and req.tunery.scheduling else 0,
            )
            jobstate.create(job)
            s.add(job)
            s.flush()
            add_event(s, job.id, f"Created fine-tuning job: {job.id}")
            files = f"Validating training file: {req.training_file}"
            if req.validation_file:
                files += f" and validation file: {req.validation_file}"
            add_event(s, job.id, files)
            details = {"model": req.model, "training_file": req.training_file, "validation_file": req.validation_file}
            self._record(s, EventType.JOB_CREATED, job, {"data": details})
            out = job_object(job)
        self.ctx.wake_scheduler()
        return out

    def dry_run(self, req: CreateJob) -> FineTuningJobEstimate:
        """What the job would cost, without creating it: :func:`api.services.estimates.dry_run`."""
        return estimates.dry_run(self.ctx, self.tenant, req)

    def list(self, req: ListJobsRequest) -> ListPaginatedFineTuningJobsResponse:
        """The tenant's jobs, newest first; with ``metadata``, those whose metadata has every pair given."""
        t, wanted = self.tenant, req.metadata or {}
        with self.ctx.db.session() as s:
            q = select(Job).where(*owned(t)).options(*NOT_SHOWN)
            if not wanted:
                rows, more = page(s, Job, q, after=req.after, limit=req.limit)
                return ListPaginatedFineTuningJobsResponse.of(job_objects(s, rows), more)
            # Metadata is JSON: filter in Python, page by page, so SQLite and PostgreSQL behave the same.
            matched: list[Job] = []
            cursor, more = req.after, True
            while more and len(matched) <= req.limit:
                rows, more = page(s, Job, q, after=cursor, limit=200)
                matched += [j for j in rows if all((j.job_metadata or {}).get(k) == v for k, v in wanted.items())]
                cursor = rows[-1].id if rows else None
            objects = job_objects(s, matched[: req.limit])
            return ListPaginatedFineTuningJobsResponse.of(objects, len(matched) > req.limit)

    def retrieve(self, job_id: str) -> FineTuningJob:
        with self.ctx.db.session() as s:
            return job_objects(s, [find_job(s, self.tenant, job_id, *NOT_SHOWN)])[0]

    # ---- the same reads encoded (JSON for REST, protobuf for gRPC), through the cache of api/encoded.py ---------
    def list_encoded(self, req: ListJobsRequest, encoding: Encoding) -> EncodedPage:
        """:meth:`list`, encoded: the page's ids and versions, then each job's encoding, kept or built."""
        if req.metadata:
            listed = self.list(req)
            return EncodedPage([j.id for j in listed.data], [encoding.encode(j) for j in listed.data], listed.has_more)
        with self.ctx.db.read() as conn:
            rows, more = _VERSIONS.page(conn, self.tenant.params(), after=req.after, limit=req.limit)
            return EncodedPage([job_id for job_id, _ in rows], self._encoded(conn, rows, encoding), more)

    def retrieve_encoded(self, job_id: str, encoding: Encoding) -> bytes:
        """:meth:`retrieve`, encoded."""
        with self.ctx.db.read() as conn:
            version = conn.execute(_VERSION, {**self.tenant.params(), "job_id": job_id}).scalar()
            if version is None:
                raise job_not_found(job_id)
            return self._encoded(conn, [(job_id, version)], encoding)[0]

    def _encoded(self, conn: Connection, versions: Sequence[tuple[str, int]], encoding: Encoding) -> Sequence[bytes]:
        """Each job's encoding, in order: kept when built from the same version of its row, else loaded and built
        (:func:`job_objects`), and kept unless the object shows more than its row (a queue position)."""

        def load(missing: list[str]) -> Iterator[tuple[str, int, BaseModel, bool]]:
            with self.ctx.db.orm(conn) as s:
                rows = list(s.scalars(_JOBS, {"ids": missing}))
                for job, obj in zip(rows, job_objects(s, rows), strict=True):
                    yield job.id, job.version, obj, not _shows_queue(job)

        return self.ctx.encoded.encoded_all(encoding, "job", versions, load)

    def _transition(
        self,
        job_id: str,
        transition: Callable[[Job], None],
        refusal: Callable[[Job], str],
        code: str,
        event: str,
        audited: EventType,
    ) -> FineTuningJob:
        """Apply one of :mod:`tunery.jobstate`'s transitions (cancel, pause, resume) to one of the tenant's jobs in
        one transaction with its event, wake the scheduler to act on it, and answer the job; a transition the job's
        status does not allow is a 400 with ``code`` and the message ``refusal`` writes."""

        def apply(s: Session) -> FineTuningJob:
            job = find_job(s, self.tenant, job_id)
            try:
                transition(job)
            except jobstate.IllegalTransition:
                raise InvalidRequest(refusal(job), param="fine_tuning_job_id", code=code) from None
            add_event(s, job.id, event)
            self._record(s, audited, job)
            return job_objects(s, [job])[0]

        out = self.ctx.db.transaction(apply)
        self.ctx.wake_scheduler()
        return out

    def cancel(self, job_id: str) -> FineTuningJob:
        """Cancel a job that has not finished: at once if it waits; a run is stopped by the scheduler."""
        return self._transition(
            job_id,
            lambda job: jobstate.cancel(job, now()),
            lambda job: f"Job {job_id} has already {'been cancelled' if job.status == 'cancelled' else job.status}.",
            "job_not_cancellable",
            "Fine-tuning job cancelled",
            EventType.JOB_CANCELLED,
        )

    def pause(self, job_id: str) -> FineTuningJob:
        """Pause a running job: ``paused`` at once; its trainer saves its state at the next step and stops."""
        return self._transition(
            job_id,
            jobstate.pause,
            lambda job: f"Job {job_id} is {job.status}; only a running job can be paused.",
            "job_not_pausable",
            "Pausing fine-tuning job: the trainer saves its state at the next step and stops",
            EventType.JOB_PAUSED,
        )

    def resume(self, job_id: str) -> FineTuningJob:
        """Resume a paused job: ``queued``, to continue from its newest complete checkpoint."""
        return self._transition(
            job_id,
            jobstate.resume,
            lambda job: f"Job {job_id} is {job.status}; only a paused job can be resumed.",
            "job_not_resumable",
            "Fine-tuning job resumed: queued to continue from its last checkpoint",
            EventType.JOB_RESUMED,
        )

    def events(self, job_id: str, req: ListJobEventsRequest) -> ListFineTuningJobEventsResponse:
        """The job's events, newest first."""
        with self.ctx.db.session() as s:
            find_job(s, self.tenant, job_id)
            events = select(JobEvent).where(JobEvent.job_id == job_id)
            rows, more = page(s, JobEvent, events, after=req.after, limit=req.limit)
            return ListFineTuningJobEventsResponse.of([event_object(e) for e in rows], more)

    def events_encoded(self, job_id: str, req: ListJobEventsRequest, encoding: Encoding) -> EncodedPage:
        """:meth:`events`, encoded; an event never changes, so its encoding is kept by its id."""
        params = {**self.tenant.params(), "job_id": job_id}
        with self.ctx.db.read() as conn:
            rows, more = _EVENT_PAGES.page(conn, params, after=req.after, limit=req.limit)
            if not rows and conn.execute(_VERSION, params).scalar() is None:
                raise job_not_found(job_id)
        return EncodedPage([e[0] for e in rows], self._events_encoded(rows, encoding), more)  # EVENT_COLUMNS[0]: id

    def events_after(
        self, job_id: str, after: str | None, encoding: Encoding, limit: int = 200
    ) -> tuple[EncodedPage, bool]:
        """The job's events after the one whose id is ``after`` (from the first without it), oldest first, at most
        ``limit``, encoded; and whether the job had ended when they were read (then no event will follow the last
        one: the final event is written with the status, in one transaction). For a client that follows a job live
        (the gRPC ``WatchEvents``). An ``after`` that is not one of this job's events is refused: a stream that
        silently restarted from the start would repeat events."""
        params = {**self.tenant.params(), "job_id": job_id}
        with self.ctx.db.read() as conn:
            status = conn.execute(_STATUS, params).scalar()
            if status is None:
                raise job_not_found(job_id)
            rows, more = _EVENT_PAGES_AFTER.page(conn, params, after=after, limit=limit)
            if after and not rows and not self._has_event(conn, job_id, after):
                raise InvalidRequest(f"No event {after!r} of job {job_id}.", param="after", code="invalid_cursor")
        page_ = EncodedPage([e.id for e in rows], self._events_encoded(rows, encoding), more)
        return page_, status in jobstate.TERMINAL and not more

    @staticmethod
    def _has_event(conn: Connection, job_id: str, event_id: str) -> bool:
        return conn.execute(_EVENT, {"job_id": job_id, "event_id": event_id}).first() is not None

    def _events_encoded(self, rows: Sequence[AnyRow], encoding: Encoding) -> Sequence[bytes]:
        cache = self.ctx.encoded
        return [cache.encoded(encoding, ("event", e.id), lambda e=e: event_object(e)) for e in rows]  # type: ignore[misc]

    def checkpoints(self, job_id: str, req: ListJobCheckpointsRequest) -> ListFineTuningJobCheckpointsResponse:
        """The job's checkpoints whose models exist, newest first, the run's best one marked (``tunery.best``)."""
        with self.ctx.db.session() as s:
            find_job(s, self.tenant, job_id)
            # A checkpoint is listed while its model is: DELETE /v1/models/{ft:...:ckpt-step-N} deletes the model row
            # (the checkpoint's row stays, as the job's record; so do its objects).
            servable = select(FineTunedModel.id).where(FineTunedModel.id == Checkpoint.fine_tuned_model_checkpoint)
            made = select(Checkpoint).where(Checkpoint.job_id == job_id)
            rows, more = page(
                s, Checkpoint, made.where(servable.exists()), after=req.after, limit=req.limit, cursors=made
            )
            # The best checkpoint is the run's, among all it made: a deleted best leaves no other one marked.
            all_metrics = s.execute(
                select(Checkpoint.step_number, Checkpoint.metrics).where(Checkpoint.job_id == job_id)
            ).all()
            best = best_checkpoint_step([(step, metrics) for step, metrics in all_metrics])
            objects = [checkpoint_object(c, None if best is None else c.step_number == best) for c in rows]
            return ListFineTuningJobCheckpointsResponse.of(objects, more)

    def eval_report(self, job_id: str, checkpoint_id: str | None = None) -> EvalReport:
        """The eval report of the job's final model, or of one of its checkpoints (docs/evals.md). NotFound until it
        is written (or when the job turned reports off)."""
        with self.ctx.db.session() as s:
            job = find_job(s, self.tenant, job_id, *NOT_SHOWN)
            if checkpoint_id is None:
                summary, what = job.eval_report, f"job {job_id}"
            else:
                ckpt = s.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.id == checkpoint_id))
                if ckpt is None:
                    raise NotFound(f"No checkpoint {checkpoint_id} of job {job_id}.", param="checkpoint_id")
                summary, what = ckpt.eval_report, f"checkpoint {checkpoint_id}"
            report_file = s.scalar(select(File).where(File.id == summary["file_id"])) if summary else None
        if report_file is None:
            raise NotFound(f"No eval report of {what} (yet).", param="checkpoint_id" if checkpoint_id else "job_id")
        try:
            return EvalReport.model_validate_json(self.ctx.store.get_bytes(report_file.object_key))
        except ObjectNotFound:
            raise NotFound(f"The eval report of {what} was deleted.", param="job_id") from None
