"""``POST /v1/fine_tuning/jobs/dry_run``: what a job would cost, without creating it (Tunery's extension).

The body is the body of ``POST /v1/fine_tuning/jobs``. The answer gives the training file's tokens with the job's
model and chat template, the resolved hyperparameters, steps, estimated GPU-hours on ``TUNERY_GPU_TYPE`` and
whether the model, method and sequence length fit the GPU's memory (docs/estimates.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import bad_request
from api.files import get_file
from api.jobs import CreateJob, prepare_job
from scheduler import hardware
from scheduler.validation import check_method_fit, check_scan, file_report, scan_stored
from tunery.data import MIN_EXAMPLES, DataFormat
from tunery.db.ops import now
from tunery.estimate import estimate_plan, model_shape
from tunery.files import report_key
from tunery.filescan import ScanOptions
from tunery.jobstate import ErrorCode, JobError
from tunery.methods import method_info
from tunery.plan import resolve_plan
from tunery.storage import ObjectNotFound

router = APIRouter()
ESTIMATE_OBJECT = "fine_tuning.job.estimate"


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
        raise bad_request(check.error.message or "invalid training file", param="training_file", code=check.error.code)
    report = file_report(file_id, scan, now(), model=model, max_seq_length=max_len, for_job=True)
    ctx.store.put_bytes(report_key(file_id, model), json.dumps(report).encode())
    return report


@router.post("/fine_tuning/jobs/dry_run")
def dry_run(body: CreateJob, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    """The checks of job creation (one function, :func:`api.jobs.prepare_job`), then the plan the scheduler would
    resolve for this file, against the trainer's hardware, and its estimate."""
    with ctx.db.session() as s:
        prepared = prepare_job(s, ctx, t, body)
        f = get_file(s, t, body.training_file)
        key = f.object_key
    request = prepared.request
    folder = ctx.settings.base_model_paths()[prepared.base_model]
    if not (Path(folder) / "tokenizer.json").is_file():
        raise bad_request(
            f"The files of base model {prepared.base_model!r} are missing.", param="model", code="model_not_ready"
        )
    max_len = request.training.requested_max_seq_length
    report = _token_report(ctx, f.id, key, prepared.base_model, folder, max_len)
    if report["status"] == "error":
        first = (report["errors"]["listed"] or [{"line": None, "message": "no examples"}])[0]
        raise bad_request(
            f"The training file {f.id} is invalid: line {first['line']}: {first['message']}",
            param="training_file",
            code="invalid_training_file",
        )
    n = int(report["examples"])
    fmt = DataFormat(report["format"]) if report.get("format") else None
    problem = check_method_fit(fmt, f.id, method_info(request.method).openai_type)
    if problem is None and n < MIN_EXAMPLES:
        problem = JobError(
            ErrorCode.invalid_n_examples,
            f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples",
            "training_file",
        )
    if problem:
        raise bad_request(problem.message, param="training_file", code=problem.code)
    tokens = report["tokens"]
    hw = hardware.trainer_hardware(ctx.settings)
    plan = resolve_plan(request, n, has_validation=bool(body.validation_file), cpu_only=not hw.gpu)
    checked = hardware.check(plan, hw)
    if checked.error is not None:
        raise bad_request(checked.error.message, param=checked.error.param, code=checked.error.code)
    try:
        est = estimate_plan(
            model_shape(Path(folder)),
            plan,
            examples=n,
            tokens_per_epoch=int(tokens["total_within_max_seq_length"]),
            trained_tokens_per_epoch=int(tokens["trained"]),
            gpu_type=ctx.settings.gpu_type,
            precision=checked.precision,
        )
    except ValueError as e:
        raise bad_request(str(e), param=None, code="invalid_gpu_type") from None
    return {
        "object": ESTIMATE_OBJECT,
        "model": body.model,
        "training_file": f.id,
        "hyperparameters": plan.openai_hyperparameters(),
        "estimated_finish": now() + round(est.gpu_seconds),
        **est.as_dict(),
    }
