"""The JobSpec of a run, built from a job row and its input files: pure functions, no database and no store.

The caller (scheduler.dispatch) looks the job's files and the parent model up; ``build_spec`` only reads them, with
what the trainer needs of the control plane (its base model folder, the object store, the reporting address). The
training plan is the job's, resolved and stored when its files were validated (``tunery.plan``), embedded whole.
"""

from __future__ import annotations

from tunery import layout
from tunery.db import File, Job
from tunery.evalreport import EvalOptions
from tunery.jobspec import DataFile, DataOptions, JobSpec, MixSpec
from tunery.jobstate import JobKind
from tunery.plan import TrainingPlan, resolve_plan


def job_plan(job: Job) -> TrainingPlan:
    """The job's resolved plan. A job queued before plans were stored has its resolved values in its OpenAI fields
    and ``tunery.training``: they resolve to themselves (the trainer caps the checkpoint and evaluation counts at
    its own number of steps)."""
    plan = job.training_plan()
    if plan is not None:
        return plan
    return resolve_plan(job.plan_request(), 10**9, has_validation=bool(job.validation_file), cpu_only=True)


def build_spec(
    job: Job,
    files: dict[str, File],
    parent_prefix: str | None,
    *,
    base_model_path: str,
    store_url: str,
    reporting_address: str,
    device: str,
) -> JobSpec | None:
    """The spec of the job's next run, or None when one of its inputs is gone: ``files`` are the job's input files
    by id (those missing were deleted), ``parent_prefix`` the object-store prefix of the fine-tuned model the job
    starts from (None when there is none, or when it was deleted). An evaluation's spec is
    :func:`build_evaluation_spec`'s."""
    if job.kind == JobKind.evaluation:
        return build_evaluation_spec(
            job,
            files,
            parent_prefix,
            base_model_path=base_model_path,
            store_url=store_url,
            reporting_address=reporting_address,
            device=device,
        )
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
    eval_options = EvalOptions.model_validate(job.tunery_options("eval"))
    reference: DataFile | None = None
    if eval_options.reference_file:
        ref = files.get(eval_options.reference_file)
        if ref is None:
            return None
        reference = DataFile(file_id=ref.id, key=ref.object_key, sha256=ref.sha256)
    init_prefix = None
    if job.model != job.base_model:  # fine-tuning a fine-tuned model: continue from its adapter
        if parent_prefix is None:
            return None
        init_prefix = parent_prefix
    assert job.fine_tuned_model
    return JobSpec(
        job_id=job.id,
        organization_id=job.organization_id,
        project_id=job.project_id,
        base_model=job.base_model,
        base_model_path=base_model_path,
        fine_tuned_model=job.fine_tuned_model,
        training_file=DataFile(file_id=train.id, key=train.object_key, sha256=train.sha256),
        validation_file=DataFile(file_id=valid.id, key=valid.object_key, sha256=valid.sha256) if valid else None,
        data=data,
        # Every job writes eval reports unless it turned them off (tunery.eval.enabled).
        eval=eval_options,
        eval_reference_file=reference,
        plan=job_plan(job),
        seed=job.seed,
        device=device,
        init_adapter_prefix=init_prefix,
        object_store=store_url,
        output_prefix=layout.job_prefix(job.id),
        reporting_address=reporting_address,
        # A job run before (paused, crashed, preempted, its scheduler gone) continues from its newest complete
        # checkpoint, if it has one.
        resume_from="latest" if job.attempts else None,
    )


def build_evaluation_spec(
    job: Job,
    files: dict[str, File],
    model_prefix: str | None,
    *,
    base_model_path: str,
    store_url: str,
    reporting_address: str,
    device: str,
) -> JobSpec | None:
    """The spec of an evaluation's run (trainer/evaluate.py): the model ``job.model`` (its files under
    ``model_prefix``) against the file ``job.training_file``, with the job's ``tunery.eval`` options and the plan of
    the job that made the model. None when the file, the reference set or the model is gone."""
    data = files.get(job.training_file)
    if data is None or model_prefix is None:
        return None
    options = EvalOptions.model_validate(job.tunery_options("eval"))
    reference: DataFile | None = None
    if options.reference_file:
        ref = files.get(options.reference_file)
        if ref is None:
            return None
        reference = DataFile(file_id=ref.id, key=ref.object_key, sha256=ref.sha256)
    return JobSpec(
        task=JobKind.evaluation,
        job_id=job.id,
        organization_id=job.organization_id,
        project_id=job.project_id,
        base_model=job.base_model,
        base_model_path=base_model_path,
        fine_tuned_model=job.model,
        training_file=DataFile(file_id=data.id, key=data.object_key, sha256=data.sha256),
        eval=options,
        eval_reference_file=reference,
        plan=job_plan(job),
        seed=job.seed,
        device=device,
        init_adapter_prefix=model_prefix,
        object_store=store_url,
        output_prefix=layout.job_prefix(job.id),
        reporting_address=reporting_address,
    )
