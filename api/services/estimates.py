"""The dry run of a job (Tunery's extension ``POST /v1/fine_tuning/jobs/dry_run``): what it would cost, without
creating it.

It runs job creation's checks (:func:`api.services.prepare.prepare_job`), then what the scheduler does when it
validates the job's files: the training file's tokens with the job's model and chat template, the plan resolved
against the trainer's hardware, the hardware's check of it, and the estimate of its GPU-hours and memory on
``TUNERY_GPU_TYPE`` (docs/estimates.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest
from api.protocol.jobs import CreateJob, FineTuningJobEstimate, JobHyperparameters
from api.services.files import find_file
from api.services.prepare import prepare_job
from scheduler import hardware
from scheduler.validation import check_method_fit, check_scan, file_report, scan_stored
from tunery.data import MIN_EXAMPLES, DataFormat
from tunery.db.models import Job, JobEvent
from tunery.db.ops import now
from tunery.estimate import (
    MeasuredMemory,
    estimate_plan,
    gradient_checkpointing,
    judge_loads_of,
    memory_signature,
    model_shape,
    with_measured,
)
from tunery.files import report_key
from tunery.filescan import ScanOptions
from tunery.jobstate import ErrorCode, JobError, JobStatus
from tunery.methods import method_info
from tunery.plan import TrainingPlan, resolve_plan
from tunery.storage import ObjectNotFound


def _token_report(ctx: AppContext, file_id: str, key: str, model: str, folder: str, max_len: int) -> dict[str, Any]:
    """The file's report for ``model`` at ``max_len``: stored by a job or an earlier dry run, or made now."""
    for candidate in (report_key(file_id, model), report_key(file_id)):
        try:
            report: dict[str, Any] = json.loads(ctx.store.get_bytes(candidate))
        except ObjectNotFound:
            continue
        tokens = report.get("tokens") or {}
        if report.get("model") == model and tokens.get("max_seq_length") == max_len:
            return report
    st = ctx.settings
    opts = ScanOptions(
        max_line_bytes=st.max_line_bytes,
        max_lines=st.max_lines,
        model_name=model,
        model_folder=folder,
        max_seq_length=max_len,
        near_dup_max_examples=st.near_dup_max_examples,
        near_dup_threshold=st.near_dup_threshold,
        workers=st.validation_workers,
    )
    scan = scan_stored(ctx.store, key, opts)
    check = check_scan(scan, file_id, "training_file")
    if check.error:
        raise InvalidRequest(
            check.error.message or "invalid training file", param="training_file", code=check.error.code
        )
    report = file_report(file_id, scan, now(), model=model, max_seq_length=max_len, for_job=True)
    ctx.store.put_bytes(report_key(file_id, model), json.dumps(report).encode())
    return report


# The project's latest succeeded jobs on the base model whose plans are compared with the dry run's.
MEASURED_CANDIDATES = 50


def measured_memory(s: Session, t: Tenant, base_model: str, plan: TrainingPlan) -> MeasuredMemory | None:
    """The peak memory measured by the latest of the project's succeeded jobs on ``base_model`` whose plan has the
    same memory signature as ``plan`` (tunery.estimate.memory_signature): the last metrics event's
    ``peak_memory_gib``, the run's peak."""
    from api.services.jobs import owned  # (the jobs' service imports this one)

    want = memory_signature(plan)
    candidates = s.execute(
        select(Job.id, Job.plan)
        .where(*owned(t), Job.base_model == base_model, Job.status == JobStatus.succeeded, Job.plan.is_not(None))
        .order_by(Job.pk.desc())
        .limit(MEASURED_CANDIDATES)
    ).all()
    for job_id, stored in candidates:
        try:
            if memory_signature(TrainingPlan.model_validate(stored)) != want:
                continue
        except ValidationError:  # a plan stored by an older version
            continue
        data = s.scalar(
            select(JobEvent.data)
            .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
            .order_by(JobEvent.pk.desc())
            .limit(1)
        )
        peak = (data or {}).get("peak_memory_gib")
        if isinstance(peak, int | float) and peak > 0:
            return MeasuredMemory(peak_memory_gib=round(float(peak), 3), job=job_id)
    return None


def dry_run(ctx: AppContext, t: Tenant, req: CreateJob) -> FineTuningJobEstimate:
    """The checks of job creation, then the plan the scheduler would resolve for this file, against the trainer's
    hardware, and its estimate, with the peak memory an earlier run of the same shape measured where there is one.
    Blocking (object store, tokenizer): run it off the event loop."""
    with ctx.db.session() as s:
        prepared = prepare_job(s, ctx, t, req)
        f = find_file(s, t, req.training_file)
        file_id, key = f.id, f.object_key
    request = prepared.request
    folder = ctx.settings.base_model_paths()[prepared.base_model]
    if not (Path(folder) / "tokenizer.json").is_file():
        raise InvalidRequest(
            f"The files of base model {prepared.base_model!r} are missing.", param="model", code="model_not_ready"
        )
    max_len = request.training.requested_max_seq_length
    report = _token_report(ctx, file_id, key, prepared.base_model, folder, max_len)
    if report["status"] == "error":
        first = (report["errors"]["listed"] or [{"line": None, "message": "no examples"}])[0]
        raise InvalidRequest(
            f"The training file {file_id} is invalid: line {first['line']}: {first['message']}",
            param="training_file",
            code="invalid_training_file",
        )
    n = int(report["examples"])
    fmt = DataFormat(report["format"]) if report.get("format") else None
    problem = check_method_fit(fmt, file_id, method_info(request.method).openai_type)
    if problem is None and n < MIN_EXAMPLES:
        problem = JobError(
            ErrorCode.invalid_n_examples,
            f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples",
            "training_file",
        )
    if problem:
        raise InvalidRequest(problem.message, param="training_file", code=problem.code)
    tokens = report["tokens"]
    hw = hardware.trainer_hardware(ctx.settings)
    per_example = int(tokens["total_within_max_seq_length"]) / n if n else None
    plan = resolve_plan(
        request, n, has_validation=bool(req.validation_file), cpu_only=not hw.gpu, tokens_per_example=per_example
    )
    checked = hardware.check(plan, hw)
    if checked.error is not None:
        raise InvalidRequest(checked.error.message, param=checked.error.param, code=checked.error.code)
    plan = plan.model_copy(update={"precision": checked.precision})  # as the scheduler stores it with the job
    try:
        judges = judge_loads_of(plan, {name: found.base_path for name, found in prepared.judges.items()})
        est = estimate_plan(
            model_shape(Path(folder)),
            plan,
            examples=n,
            tokens_per_epoch=int(tokens["total_within_max_seq_length"]),
            trained_tokens_per_epoch=int(tokens["trained"]),
            gpu_type=ctx.settings.gpu_type,
            precision=checked.precision,
            judges=judges,
            generation=ctx.settings.trainer_generation,
        )
    except ValueError as e:
        raise InvalidRequest(str(e), param=None, code="invalid_gpu_type") from None
    # Whether the run will checkpoint its activations, by the scheduler's rule, and the plan as it will store it.
    checkpointing = gradient_checkpointing(plan.gradient_checkpointing, est, hw.gpu)
    est.gradient_checkpointing = checkpointing
    plan = plan.model_copy(update={"gradient_checkpointing": checkpointing})
    with ctx.db.session() as s:
        est = with_measured(est, measured_memory(s, t, prepared.base_model, plan), gpu=hw.gpu)
    return FineTuningJobEstimate(
        model=req.model,
        training_file=file_id,
        hyperparameters=JobHyperparameters.model_validate(plan.openai_hyperparameters()),
        estimated_finish=now() + round(est.gpu_seconds),
        **est.model_dump(),
    )
