"""The gRPC ``TrainerReporting`` service: trainer runs report steps, checkpoints and outcomes here."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunery import ids, jobstate, layout
from tunery.aliases import point_alias
from tunery.audit import Actor
from tunery.db import Checkpoint, Database, File, FineTunedModel, Job
from tunery.db.models import RESULTS_PURPOSE
from tunery.db.ops import add_event, now
from tunery.evalreport import EvalOptions, EvalReport
from tunery.exports import ExportOptions, result_filename
from tunery.files import report_key
from tunery.jobstate import TERMINAL, ErrorCode, JobError, JobKind, UnknownErrorCode, error_code
from tunery.metrics import Metrics
from tunery.storage import ObjectNotFound, ObjectStore
from tunery.v1 import reporting_pb2 as pb
from tunery.v1 import reporting_pb2_grpc as pb_grpc

log = logging.getLogger("tunery.reporting")

METRIC_FIELDS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "peak_memory_gib",
)


def metrics_dict(m: pb.StepMetrics) -> dict[str, Any]:
    out: dict[str, Any] = {"step": m.step}
    for name in METRIC_FIELDS:
        if m.HasField(name):
            out[name] = getattr(m, name)
    return out


def metrics_message(m: pb.StepMetrics) -> str:
    msg = f"Step {m.step}/{m.total_steps}"
    parts = []
    if m.HasField("train_loss"):
        parts.append(f"training loss={m.train_loss:.2f}")
    if m.HasField("valid_loss"):
        parts.append(f"validation loss={m.valid_loss:.2f}")
    if m.HasField("full_valid_loss"):
        parts.append(f"full validation loss={m.full_valid_loss:.2f}")
    return f"{msg}: {', '.join(parts)}" if parts else msg


def servable_model(job: Job, name: str, kind: str, prefix: str) -> FineTunedModel:
    """A fine-tuned or checkpoint model of a job, owned by the job's organization and project."""
    return FineTunedModel(
        id=name,
        kind=kind,
        base_model=job.base_model,
        job_id=job.id,
        object_prefix=prefix,
        owned_by=job.organization_id,
        organization_id=job.organization_id,
        project_id=job.project_id,
        created_at=now(),
    )


def result_file(job: Job, key: str, filename: str, size: int) -> File:
    """A file of purpose ``fine-tune-results`` over an object the job's run wrote (its key decided by the server)."""
    return File(
        id=ids.file_id(),
        organization_id=job.organization_id,
        project_id=job.project_id,
        filename=filename,
        purpose=RESULTS_PURPOSE,
        bytes=size,
        sha256=None,
        object_key=key,
        created_at=now(),
        expires_at=None,
        status="processed",
        status_details=None,
    )


# An eval report is a few kilobytes (tunery/evalreport.py); a larger object under its key is not read.
MAX_REPORT_BYTES = 4 * 1024 * 1024


def eval_report_file(s: Session, store: ObjectStore, job: Job, prefix: str, filename: str) -> dict[str, Any] | None:
    """Register the eval report the run wrote beside the model under ``prefix`` (the server's key, not the
    trainer's) as one of the job's files; its summary (``ReportSummary``) with the file's id, or None when there is
    no report there, or what is there is not one."""
    key = layout.eval_report_key(prefix)
    try:
        size = store.size(key)
        if size > MAX_REPORT_BYTES:
            log.warning("job %s: %s is %d bytes, more than an eval report can be; ignored", job.id, key, size)
            return None
        report = EvalReport.model_validate_json(store.get_bytes(key))
    except ObjectNotFound:
        return None
    except ValueError as e:  # pydantic's ValidationError, a JSON error: a report is typed
        log.warning("job %s: %s is not an eval report (%s); ignored", job.id, key, str(e)[:200])
        return None
    if report.job_id != job.id:
        log.warning("job %s: %s is another job's report; ignored", job.id, key)
        return None
    f = result_file(job, key, filename, size)
    s.add(f)
    return report.summary(f.id).model_dump()


def promote(s: Session, job: Job) -> None:
    """A job that succeeded with ``tunery.eval.promote_to_alias`` (and so passed its gate, which that needs) points
    the alias at its model: a new version, made by the job (docs/evals.md)."""
    options = EvalOptions.model_validate(job.tunery_options("eval"))
    name = options.promote_to_alias
    if not name or options.gate is None or job.fine_tuned_model is None:
        return
    report = job.eval_report or {}
    if report.get("gate_passed") is not True:  # no report saying it passed: nothing is promoted
        message = f"Not promoted to alias {name}: no eval report says the model passed the gate"
        add_event(s, job.id, message, level="warn")
        return
    note = f"promoted by {job.id}: its model passed the eval gate"
    alias = point_alias(s, Actor("job", job.id), job.organization_id, job.project_id, name, job.fine_tuned_model, note)
    add_event(
        s, job.id, f"Promoted {job.fine_tuned_model} to alias {name} (version {alias.version})", data={"alias": name}
    )


def reported_error(request: pb.FinishedRequest) -> JobError:
    """The job error a failed run reported. A code this control plane does not register (a newer trainer's)
    becomes ``training_error`` so that the job still fails; the trainer's message is kept."""
    try:
        code = error_code(request.error_code or ErrorCode.training_error)
    except UnknownErrorCode:
        log.warning("the trainer reported an unregistered error code %r; recording training_error", request.error_code)
        code = ErrorCode.training_error
    return JobError(code, request.error_message or "Training failed.", request.error_param or None)


MAX_EVENT_MESSAGE = 4096  # characters of a trainer event's message that are kept
MAX_EVENT_DATA = 65536  # bytes of a trainer event's data: larger data is dropped


def token_matches(given: str, expected: str | None) -> bool:
    """The run token check against the digest the job keeps (:func:`tunery.ids.token_digest`), in constant time
    whatever the job (a missing job or token compares against a dummy)."""
    ok = expected is not None and expected != ""
    return hmac.compare_digest(ids.token_digest(given).encode(), (expected or "\0" * 64).encode()) and ok


def run_job(s: Session, run: pb.RunRef) -> Job | None:
    """The job of a run whose token is the job's current run token, else None: the one check of a trainer's calls
    (reports here, object access in :mod:`scheduler.object_access`), made before anything else of a call is read.
    An unknown job, a finished one (its token is cleared) and a wrong token look alike."""
    job = s.scalar(select(Job).where(Job.id == run.job_id))
    if not token_matches(run.run_token, job.run_token if job is not None else None):
        return None
    return job


def event_data(data_json: str) -> dict[str, Any] | None:
    """A trainer event's data: a JSON object of bounded size, or None (anything else is dropped, not an error)."""
    if not data_json or len(data_json.encode()) > MAX_EVENT_DATA:
        return None
    try:
        data = json.loads(data_json)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def finish_evaluation(s: Session, store: ObjectStore, job: Job, request: pb.FinishedRequest) -> None:
    """An evaluation's run ended (docs/evals.md): its report, at the server's key, becomes its file (purpose
    ``fine-tune-results``) and its summary; a run that reported success without a readable report fails."""
    job.run_token = None
    job.eval_report = eval_report_file(s, store, job, layout.job_prefix(job.id), "eval_report.json")
    job.result_files = [job.eval_report["file_id"]] if job.eval_report else []
    if not request.succeeded or job.eval_report is None:
        error = (
            reported_error(request)
            if not request.succeeded
            else JobError(ErrorCode.training_error, "The evaluation ended without a readable report.")
        )
        jobstate.fail(job, error, now())
        add_event(s, job.id, jobstate.failure_event(error, job.kind), level="error")
        return
    jobstate.succeed(job, now())
    add_event(s, job.id, f"Evaluation of {job.model} written", data=job.eval_report)
    add_event(s, job.id, "The evaluation has successfully completed")


def export_key(job: Job) -> str:
    """Where an export's run stores its one result: the server's key (tunery/layout.py), from the job's format."""
    options = ExportOptions.model_validate(job.tunery_options("export"))
    return layout.export_key(layout.job_prefix(job.id), options.format)


def finish_export(s: Session, store: ObjectStore, job: Job, request: pb.FinishedRequest) -> None:
    """An export's run ended (docs/exports.md): its merged model, at the server's key, becomes its one file (purpose
    ``fine-tune-results``, owned by the project); a run that reported success without it fails."""
    job.run_token = None
    key = export_key(job)
    options = ExportOptions.model_validate(job.tunery_options("export"))
    if request.succeeded and store.exists(key):
        f = result_file(job, key, result_filename(job.model, options.format), store.size(key))
        s.add(f)
        job.result_files = [f.id]
        jobstate.succeed(job, now())
        add_event(s, job.id, f"Export of {job.model} written: {f.id} ({f.filename}, {f.bytes} bytes)")
        add_event(s, job.id, "The export has successfully completed")
        return
    error = (
        reported_error(request)
        if not request.succeeded
        else JobError(ErrorCode.export_error, "The export ended without its result.")
    )
    job.result_files = []
    jobstate.fail(job, error, now())
    add_event(s, job.id, jobstate.failure_event(error, job.kind), level="error")


class ReportingService(pb_grpc.TrainerReportingServicer):
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
        trainer_threads: Callable[[], int] | None = None,
    ):
        """``trainer_threads``: the CPU threads each trainer should train with now, told in every reply (the
        embedded server's :meth:`scheduler.cores.CoreShare.trainer_threads_now`); None: those it started with."""
        self.db = db
        self.store = store
        self.on_change = on_change
        self.metrics = metrics or Metrics()
        self.trainer_threads = trainer_threads

    # Every call runs in one transaction on the job named by the run, after the token check.
    def _with_job(
        self,
        kind: str,
        run: pb.RunRef,
        context: grpc.ServicerContext,
        fn: Callable[[Session, Job], None],
        check: Callable[[Job], str | None] = lambda job: None,
    ) -> pb.ReportReply:
        """Apply a report to its job in one transaction, after checking the run token (in constant time, before
        anything of the report is read) and then the report against the job (``check``: a refusal's reason).

        An unknown job, a finished one and a wrong token get the same answer, so a caller without the token learns
        nothing about jobs; the run's own trainer learns it was stopped from the refusal, as from a cancel."""
        self.metrics.trainer_reports.labels(kind).inc()
        refused: list[str] = []

        def apply(s: Session) -> pb.ReportReply | None:
            refused.clear()
            job = run_job(s, run)
            if job is None:
                return None
            if job.status in TERMINAL or job.cancel_requested:
                return pb.ReportReply(cancel_requested=True)
            problem = check(job)
            if problem is not None:
                refused.append(problem)
                return None
            fn(s, job)
            return pb.ReportReply(
                cancel_requested=job.cancel_requested,
                pause_requested=job.pause_requested,
                cpu_threads=self.trainer_threads() if self.trainer_threads else 0,
            )

        reply = self.db.transaction(apply)
        if refused:
            log.warning("refused a %s report of job %s: %s", kind, run.job_id, refused[0])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused[0])
        if reply is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "unknown job or stale run token")
        assert reply is not None
        return reply

    def token_bound(self, job: Job) -> int | None:
        """The most tokens the job can train on, from what the server knows: its plan (epochs, max_seq_length, the
        method's sequences per example) and the examples its validated files hold (their reports for its model).
        None when one is not known (a job validated before plans were stored)."""
        plan = job.training_plan()
        if plan is None:
            return None
        examples = 0
        for param, file_id in job.input_files():
            if param == "validation_file":
                continue
            try:
                report = json.loads(self.store.get_bytes(report_key(file_id, job.base_model)))
            except (ObjectNotFound, ValueError):
                return None
            examples += int(report.get("examples") or 0)
        return plan.n_epochs * examples * plan.max_seq_length * plan.sequences_per_example

    def Started(self, request: pb.StartedRequest, context: grpc.ServicerContext) -> pb.ReportReply:
        def apply(s: Session, job: Job) -> None:
            job.total_steps = int(request.total_steps)
            add_event(
                s,
                job.id,
                f"Training started: {request.train_examples} examples, {request.total_steps} steps",
                data={
                    "total_steps": request.total_steps,
                    "train_examples": request.train_examples,
                    "train_tokens_per_epoch": request.train_tokens_per_epoch,
                },
            )

        return self._with_job("started", request.run, context, apply)

    def Metrics(self, request: pb.MetricsRequest, context: grpc.ServicerContext) -> pb.ReportReply:
        m = request.metrics

        def apply(s: Session, job: Job) -> None:
            if job.reported_step is not None and m.step <= job.reported_step:
                return  # a step reported before, by the run this one resumed from: one event per step
            job.reported_step = int(m.step)
            # The method's own figures (DPO's rewards_*, KTO's kl, ...) ride along in the event's data.
            data = {**metrics_dict(m), **dict(sorted(m.method_metrics.items())), "total_steps": m.total_steps}
            if m.HasField("learning_rate"):
                data["learning_rate"] = m.learning_rate  # the dashboard's learning-rate curve
            if m.HasField("tokens_per_second"):
                data["tokens_per_second"] = m.tokens_per_second  # the step's throughput, as the trainer timed it
            add_event(s, job.id, metrics_message(m), type="metrics", data=data)
            job.total_steps = int(m.total_steps) or job.total_steps
            if job.started_at and m.step > 0 and m.total_steps >= m.step:
                per_step = (time.time() - job.started_at) / m.step
                job.estimated_finish = int(time.time() + per_step * (m.total_steps - m.step))

        return self._with_job("metrics", request.run, context, apply)

    def Event(self, request: pb.EventRequest, context: grpc.ServicerContext) -> pb.ReportReply:
        def apply(s: Session, job: Job) -> None:  # parsed only once the token is checked
            level = request.level if request.level in ("info", "warn", "error") else "info"
            add_event(s, job.id, request.message[:MAX_EVENT_MESSAGE], level=level, data=event_data(request.data_json))

        return self._with_job("event", request.run, context, apply)

    def Checkpoint(self, request: pb.CheckpointRequest, context: grpc.ServicerContext) -> pb.ReportReply:
        def apply(s: Session, job: Job) -> None:
            assert job.fine_tuned_model
            name = ids.checkpoint_model_name(job.fine_tuned_model, int(request.step))
            prefix = layout.checkpoint_prefix(layout.job_prefix(job.id), int(request.step))  # checked equal
            if s.scalar(select(Checkpoint).where(Checkpoint.fine_tuned_model_checkpoint == name)):
                return  # a retried report
            s.add(
                Checkpoint(
                    id=ids.checkpoint_id(),
                    job_id=job.id,
                    created_at=now(),
                    step_number=int(request.step),
                    metrics=metrics_dict(request.metrics),
                    fine_tuned_model_checkpoint=name,
                    object_prefix=prefix,
                    eval_report=eval_report_file(
                        s, self.store, job, prefix, f"eval_report_step_{int(request.step)}.json"
                    ),
                )
            )
            s.add(servable_model(job, name, "checkpoint", prefix))
            add_event(s, job.id, f"Checkpoint created at step {request.step}", data={"step": request.step})

        def check(job: Job) -> str | None:
            expected = layout.checkpoint_prefix(layout.job_prefix(job.id), int(request.step))
            if request.object_prefix.rstrip("/") != expected:
                return f"a checkpoint of step {request.step} is stored under {expected}"
            return None

        return self._with_job("checkpoint", request.run, context, apply, check)

    def Finished(self, request: pb.FinishedRequest, context: grpc.ServicerContext) -> pb.ReportReply:
        done: list[int] = []  # the trained tokens of the job it made succeed (once, however often it is retried)

        def apply(s: Session, job: Job) -> None:
            done.clear()
            if job.kind == JobKind.evaluation:
                finish_evaluation(s, self.store, job, request)
                return
            if job.kind == JobKind.export:
                finish_export(s, self.store, job, request)
                return
            job.run_token = None
            model_prefix = layout.model_prefix(layout.job_prefix(job.id))
            # The final model's report: also when the job failed its eval gate (the report says why).
            job.eval_report = eval_report_file(s, self.store, job, model_prefix, "eval_report.json")
            report_files = [job.eval_report["file_id"]] if job.eval_report else []
            if not request.succeeded:
                error = reported_error(request)
                jobstate.fail(job, error, now())
                job.result_files = report_files
                add_event(s, job.id, jobstate.failure_event(error), level="error")
                return
            assert job.fine_tuned_model
            results_key = layout.results_key(layout.job_prefix(job.id))  # the server's, not the report's
            results = []
            if self.store.exists(results_key):
                f = result_file(job, results_key, "step_metrics.csv", self.store.size(results_key))
                s.add(f)
                results.append(f.id)
            job.result_files = results + report_files
            s.add(servable_model(job, job.fine_tuned_model, "fine_tuned", model_prefix))
            job.trained_tokens = int(request.trained_tokens)
            jobstate.succeed(job, now())
            done.append(job.trained_tokens)
            add_event(s, job.id, f"New fine-tuned model created: {job.fine_tuned_model}")
            promote(s, job)
            add_event(s, job.id, "The job has successfully completed")

        def check(job: Job) -> str | None:
            if not request.succeeded:
                return None
            prefix = layout.job_prefix(job.id)
            if job.kind == JobKind.evaluation:
                if request.results_key != layout.eval_report_key(prefix) or request.model_prefix:
                    return f"an evaluation's report is stored at {layout.eval_report_key(prefix)}"
                return None
            if job.kind == JobKind.export:
                if request.results_key != export_key(job) or request.model_prefix:
                    return f"an export's result is stored at {export_key(job)}"
                return None
            if request.model_prefix.rstrip("/") != layout.model_prefix(prefix):
                return f"the final model is stored under {layout.model_prefix(prefix)}"
            if request.results_key and request.results_key != layout.results_key(prefix):
                return f"the results file is stored at {layout.results_key(prefix)}"
            if request.trained_tokens < 0:
                return "trained_tokens cannot be negative"
            bound = self.token_bound(job)
            if bound is not None and request.trained_tokens > bound:
                return f"trained_tokens {request.trained_tokens} is more than the job's files can hold ({bound})"
            return None

        reply = self._with_job("finished", request.run, context, apply, check)
        if done:
            self.metrics.trained_tokens.inc(done[0])
        self.on_change()
        return reply


class ReportingServer:
    """The gRPC server the trainer runs talk to."""

    def __init__(
        self,
        service: ReportingService,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 8,
        credentials: grpc.ServerCredentials | None = None,
        objects: pb_grpc.TrainerObjectsServicer | None = None,
    ):
        """Plaintext, or TLS with ``credentials`` (:func:`tunery.grpc_tls.server_credentials`); with ``objects``
        (:class:`scheduler.object_access.ObjectAccessService`) it also answers brokered trainers' object access."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
        pb_grpc.add_TrainerReportingServicer_to_server(service, self.server)
        if objects is not None:
            pb_grpc.add_TrainerObjectsServicer_to_server(objects, self.server)
        bind = f"{host}:{port}"
        self.tls = credentials is not None
        self.port = (
            self.server.add_secure_port(bind, credentials) if credentials else self.server.add_insecure_port(bind)
        )
        if not self.port:
            raise RuntimeError(f"could not bind the reporting service on {host}:{port}")
        self.address = f"{host}:{self.port}"

    def start(self) -> None:
        self.server.start()
        log.info("trainer reporting service on %s (%s)", self.address, "TLS" if self.tls else "plaintext")

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait()
