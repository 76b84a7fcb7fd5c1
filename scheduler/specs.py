"""The JobSpec of a run, built from a job row and its input files: pure functions, no database and no store.

The caller (scheduler.dispatch) looks the job's files, the parent model and the grader's judge models up;
``build_spec`` only reads them, with what the trainer needs of the control plane (its base model folder, the object
store, the reporting address). The training plan is the job's, resolved and stored when its files were validated
(``tunery.plan``), embedded whole. Every kind of job (tunery.jobstate.JobKind) shares :func:`run_spec`'s fields; each
adds its own.
"""

from __future__ import annotations

from typing import Any

from tunery import layout
from tunery.db import File, Job
from tunery.evalreport import EvalOptions
from tunery.exports import ExportOptions
from tunery.integrations import IntegrationsSpec
from tunery.jobspec import DataFile, DataOptions, EmbeddingSpec, JobSpec, JudgeSpec, MixSpec
from tunery.jobstate import JobKind
from tunery.plan import TrainingPlan, resolve_plan
from tunery.settings import Generation


def job_plan(job: Job) -> TrainingPlan:
    """The job's resolved plan. A job queued before plans were stored has its resolved values in its OpenAI fields
    and ``tunery.training``: they resolve to themselves (the trainer caps the checkpoint and evaluation counts at
    its own number of steps)."""
    plan = job.training_plan()
    if plan is not None:
        return plan
    return resolve_plan(job.plan_request(), 10**9, has_validation=bool(job.validation_file), cpu_only=True)


class InputGone(Exception):
    """One of the job's inputs (a file, the model it reads) was deleted: it has no spec."""


def data_file(files: dict[str, File], file_id: str | None) -> DataFile | None:
    """The input file ``file_id`` as the spec names it; None when no file is named. Raises InputGone when it was
    deleted."""
    if not file_id:
        return None
    f = files.get(file_id)
    if f is None:
        raise InputGone(file_id)
    return DataFile(file_id=f.id, key=f.object_key, sha256=f.sha256)


def run_spec(
    job: Job,
    files: dict[str, File],
    *,
    base_model_path: str,
    store_url: str,
    reporting_address: str,
    device: str,
    generation: Generation = "auto",
    **fields: Any,
) -> JobSpec:
    """The spec of a run of any kind: what every run shares (its job and tenant, its base model, the plan, seed and
    device, who samples a reinforcement run's answers, the object store and the run's own prefix in it, the
    reporting address, the eval options of ``tunery.eval`` and their reference set), plus the kind's own
    ``fields``. Raises InputGone when the reference set was deleted."""
    options = EvalOptions.model_validate(job.tunery_options("eval"))
    return JobSpec(
        **{
            "job_id": job.id,
            "organization_id": job.organization_id,
            "project_id": job.project_id,
            "base_model": job.base_model,
            "base_model_path": base_model_path,
            "eval": options,
            "eval_reference_file": data_file(files, options.reference_file),
            "plan": job_plan(job),
            "seed": job.seed,
            "device": device,
            "generation": generation,
            "object_store": store_url,
            "output_prefix": layout.job_prefix(job.id),
            "reporting_address": reporting_address,
            **fields,
        }
    )


def build_spec(
    job: Job,
    files: dict[str, File],
    parent_prefix: str | None,
    *,
    base_model_path: str,
    store_url: str,
    reporting_address: str,
    device: str,
    generation: Generation = "auto",
    judges: dict[str, JudgeSpec] | None = None,
    embedding_model: EmbeddingSpec | None = None,
    integrations: IntegrationsSpec | None = None,
) -> JobSpec | None:
    """The spec of the job's next run, or None when one of its inputs is gone: ``files`` are the job's input files
    by id (those missing were deleted), ``parent_prefix`` the object-store prefix of the fine-tuned model the job
    starts from, or that an evaluation or an export reads (None when there is none, or when it was deleted), ``judges``
    a fine-tuning job's grader's judge models, resolved, ``embedding_model`` the embedding model of its cosine metrics,
    ``integrations`` its experiment trackers
    (:func:`tunery.integrations.integrations_spec`)."""
    where = {
        "base_model_path": base_model_path,
        "store_url": store_url,
        "reporting_address": reporting_address,
        "device": device,
        "generation": generation,
    }
    try:
        if job.kind == JobKind.evaluation:
            return _evaluation(job, files, parent_prefix, judges or {}, embedding_model, **where)
        if job.kind == JobKind.export:
            return _export(job, files, parent_prefix, **where)
        return _fine_tune(job, files, parent_prefix, judges or {}, embedding_model, integrations, **where)
    except InputGone:
        return None


def _fine_tune(
    job: Job,
    files: dict[str, File],
    parent_prefix: str | None,
    judges: dict[str, JudgeSpec],
    embedding_model: EmbeddingSpec | None,
    integrations: IntegrationsSpec | None,
    **where: Any,
) -> JobSpec:
    options = job.tunery_options("data")
    data: DataOptions | None = None
    if options:
        mix = None
        if options.get("mix"):
            mix_file = data_file(files, options["mix"]["file"])
            assert mix_file is not None
            mix = MixSpec(file=mix_file, fraction=options["mix"]["fraction"])
        data = DataOptions(
            drop_duplicates=options.get("drop_duplicates", False),
            long_examples=options.get("long_examples", "truncate"),
            mix=mix,
        )
    init_prefix = None
    if job.model != job.base_model:  # fine-tuning a fine-tuned model: continue from its adapter
        if parent_prefix is None:
            raise InputGone(job.model)
        init_prefix = parent_prefix
    train = data_file(files, job.training_file)
    if train is None:
        raise InputGone(job.training_file)
    assert job.fine_tuned_model
    return run_spec(
        job,
        files,
        **where,
        task=JobKind.fine_tune,
        fine_tuned_model=job.fine_tuned_model,
        training_file=train,
        validation_file=data_file(files, job.validation_file),
        data=data,
        init_adapter_prefix=init_prefix,
        judges=judges,
        embedding_model=embedding_model,
        integrations=integrations,
        # A job run before (paused, crashed, preempted, its scheduler gone) continues from its newest complete
        # checkpoint, if it has one.
        resume_from="latest" if job.attempts else None,
    )


def _evaluation(
    job: Job,
    files: dict[str, File],
    model_prefix: str | None,
    judges: dict[str, JudgeSpec],
    embedding_model: EmbeddingSpec | None,
    **where: Any,
) -> JobSpec:
    """An evaluation's run (trainer/evaluate.py): the model ``job.model`` (its files under ``model_prefix``) against
    the file ``job.training_file``, with the job's ``tunery.eval`` options and the plan of the job that made the
    model (and, for a reinforcement job's model, the judges and embedding model of its grader, to grade a
    reinforcement file)."""
    data = data_file(files, job.training_file)
    if data is None or model_prefix is None:
        raise InputGone(job.training_file if data is None else job.model)
    return run_spec(
        job,
        files,
        **where,
        task=JobKind.evaluation,
        fine_tuned_model=job.model,
        training_file=data,
        init_adapter_prefix=model_prefix,
        judges=judges,
        embedding_model=embedding_model,
    )


def _export(job: Job, files: dict[str, File], model_prefix: str | None, **where: Any) -> JobSpec:
    """An export's run (trainer/export_task.py): the model ``job.model`` (its files under ``model_prefix``) merged
    into its base and stored as ``tunery.export`` says. It reads no data file and writes no eval report."""
    if model_prefix is None:
        raise InputGone(job.model)
    return run_spec(
        job,
        files,
        **where,
        task=JobKind.export,
        fine_tuned_model=job.model,
        init_adapter_prefix=model_prefix,
        export=ExportOptions.model_validate(job.tunery_options("export")),
        eval=None,
    )
