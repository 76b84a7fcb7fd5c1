"""On-demand evaluations (docs/evals.md): the eval report of an existing ``ft:`` model or checkpoint model against a
file of the project, as a short job of its own: create one, list, retrieve and cancel them, read the report.

The design: an evaluation is a short job (api/services/short_jobs.py) of kind ``evaluation``, so it goes through
everything a fine-tuning job's run does, unchanged, the scheduler's file validation included. At the API it is its
own resource, ``/v1/tunery/evaluations`` (ids ``evaljob-...``, object ``tunery.evaluation``).

The checks, in the other routes' words: the model is one the project may use (its own, or shared with it;
otherwise the 404 of ``GET /v1/models/{model}``); a base model is refused (400 ``invalid_model``: a report compares
a fine-tuned model against its base, and a base model has nothing to be compared with); the file is the project's,
of purpose ``fine-tune`` and not refused by its validation (a 400 naming ``file``), and holds chat examples or
preference pairs, or reinforcement prompts, whose sampled answers are graded (the report's ``reward`` section) by
the evaluation's ``grader`` or, for a model a reinforcement job made, by its job's grader. Reinforcement prompts that
nothing would grade, and chat or preference examples given with a grader, are refused (known at once when the file
was validated at upload; otherwise the evaluation fails with ``invalid_file`` when the scheduler validates it:
scheduler/validation.py's ``evaluation_file_problem`` decides both). A ``grader`` is checked as a reinforcement job's
(a 400 naming the field under ``grader``; its judges models the project may use), and becomes the grader of the
evaluation's plan (``tunery.plan.graded_by``), which is all the scheduler and the trainer read.
"""

from __future__ import annotations

import json
import secrets

from sqlalchemy import select

from api.errors import InvalidRequest, NotFound
from api.protocol.evaluations import CreateEvaluationRequest, Evaluation, EvaluationList
from api.protocol.jobs import FineTuningJobError
from api.services.graders import resolve_judges
from api.services.models import model_to_read
from api.services.prepare import check_file, checked_grader
from api.services.short_jobs import ShortJobService
from scheduler.validation import evaluation_file_problem
from tunery import ids
from tunery.audit import EventType
from tunery.data import DataFormat
from tunery.db import File, Job
from tunery.evalreport import EvalReport, ReportOptions, ReportSummary
from tunery.files import report_key
from tunery.jobstate import EVAL_FILE_PARAM, EVAL_GRADER_PARAM, JobKind, JobStatus
from tunery.plan import graded_by
from tunery.storage import ObjectNotFound

REFERENCE = "eval.reference_file"


def evaluation_object(j: Job) -> Evaluation:
    options = ((j.extensions or {}).get("tunery") or {}).get("eval") or {}
    return Evaluation(
        id=j.id,
        created_at=j.created_at,
        finished_at=j.finished_at,
        status=JobStatus(j.status),
        model=j.model,
        base_model=j.base_model,
        file=j.training_file,
        seed=j.seed,
        eval=ReportOptions.model_validate({k: v for k, v in options.items() if k in ReportOptions.model_fields}),
        grader=j.evaluation_grader(),  # type: ignore[arg-type]  # checked when it was given
        error=FineTuningJobError.model_validate(j.error) if j.error is not None else None,
        report=ReportSummary.model_validate(j.eval_report) if j.eval_report else None,
        result_files=list(j.result_files or []),
    )


class EvaluationService(ShortJobService[Evaluation, EvaluationList]):
    """The caller's evaluations. Blocking (database, object store): run it off the event loop."""

    kind = JobKind.evaluation
    noun = "evaluation"
    created = EventType.EVALUATION_CREATED
    cancelled = EventType.EVALUATION_CANCELLED
    list_type = EvaluationList
    to_object = staticmethod(evaluation_object)

    def _check_format(self, f: File, model: str, graded: bool, grader_given: bool) -> None:
        """A file validated at upload that the evaluation could not score or grade is refused now (``graded``: it has
        a grader, its own or its model's job's; ``grader_given``: its own); one not validated yet is checked by the
        scheduler, by the same rule (scheduler/validation.py's ``evaluation_file_problem``)."""
        if f.status != "processed":
            return
        try:
            report = json.loads(self.ctx.store.get_bytes(report_key(f.id)))
            fmt = DataFormat(report.get("format"))
        except (ObjectNotFound, ValueError, TypeError):
            return
        problem = evaluation_file_problem(f.id, fmt.kind, model, graded, grader_given)
        if problem is not None:
            raise InvalidRequest(problem, param=EVAL_FILE_PARAM, code="invalid_file")

    def create(self, req: CreateEvaluationRequest) -> Evaluation:
        """A new evaluation, ``validating_files``: the scheduler validates its file, then queues it."""
        t = self.tenant
        base_models = self.ctx.settings.base_model_paths()
        options = req.eval or ReportOptions()
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        with self.ctx.db.session() as s:
            row = model_to_read(
                s,
                t,
                req.model,
                base_models,
                "an evaluation compares a fine-tuned model (ft:...) or a checkpoint model (ft:...:ckpt-step-N) with "
                "its base model.",
            )
            parent = s.scalar(select(Job).where(Job.id == row.job_id))
            plan = parent.training_plan() if parent is not None else None
            if parent is None or plan is None:
                raise InvalidRequest(
                    f"Model {req.model!r} was made before training plans were stored; it cannot be evaluated.",
                    param="model",
                    code="model_not_available",
                )
            if req.grader is not None:
                embeddings = self.ctx.settings.embedding_model_path() is not None
                grader = checked_grader(req.grader, EVAL_GRADER_PARAM, embeddings)
                resolve_judges(s, self.ctx, t, grader, EVAL_GRADER_PARAM)
                plan = graded_by(plan, req.grader)
            graded, given = plan.reinforcement is not None, req.grader is not None
            self._check_format(check_file(s, t, req.file, EVAL_FILE_PARAM), req.model, graded, given)
            if options.reference_file is not None:
                check_file(s, t, options.reference_file, REFERENCE)
            job_id = ids.evaluation_id()
            out = self._new(
                s,
                job_id=job_id,
                model=req.model,
                base_model=row.base_model,
                parent=parent,
                plan=plan,
                options={"eval": options.model_dump(), **({EVAL_GRADER_PARAM: req.grader} if req.grader else {})},
                file=req.file,
                seed=seed,
                events=[f"Created evaluation: {job_id} of {req.model}", f"Validating file: {req.file}"],
                details={"model": req.model, "file": req.file},
            )
        self.ctx.wake_scheduler()
        return out

    def report(self, evaluation_id: str) -> EvalReport:
        """The evaluation's report (the typed shape of a job's: tunery.evalreport.EvalReport). NotFound until it is
        written."""
        with self.ctx.db.session() as s:
            job = self._find(s, evaluation_id)
            summary = job.eval_report
            report_file = s.scalar(select(File).where(File.id == summary["file_id"])) if summary else None
        if report_file is None:
            raise NotFound(f"No eval report of evaluation {evaluation_id} (yet).", param="evaluation_id")
        try:
            return EvalReport.model_validate_json(self.ctx.store.get_bytes(report_file.object_key))
        except ObjectNotFound:
            raise NotFound(
                f"The eval report of evaluation {evaluation_id} was deleted.", param="evaluation_id"
            ) from None
