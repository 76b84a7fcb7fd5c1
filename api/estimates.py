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
from api.jobs import CreateJob, _check_file, _hyperparameters
from scheduler.validation import check_method_fit, check_scan, file_report, scan_stored
from tunery import hyperparams
from tunery.data import MIN_EXAMPLES, DataFormat
from tunery.db.ops import now
from tunery.estimate import estimate, model_shape
from tunery.files import report_key
from tunery.filescan import ScanOptions
from tunery.jobspec import TrainingMethod
from tunery.jobstate import ErrorCode, JobError
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


def _trainer(body: CreateJob) -> TrainingMethod:
    """What the job would run: supervised, or the preference trainer of a dpo job (``tunery.method.trainer``)."""
    if body.method is None or body.method.type != "dpo":
        return "supervised"
    return body.tunery.method.trainer if body.tunery and body.tunery.method else "dpo"


@router.post("/fine_tuning/jobs/dry_run")
def dry_run(body: CreateJob, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)) -> dict:
    models = ctx.settings.base_model_paths()
    folder = models.get(body.model)
    if folder is None:
        raise bad_request(
            f"Model {body.model!r} is not available for fine-tuning. Available base models: "
            f"{', '.join(models) or 'none configured'}.",
            param="model",
            code="model_not_available",
        )
    if not (Path(folder) / "tokenizer.json").is_file():
        raise bad_request(f"The files of base model {body.model!r} are missing.", param="model", code="model_not_ready")
    with ctx.db.session() as s:
        _check_file(s, t, body.training_file, "training_file")
        f = get_file(s, t, body.training_file)
        key = f.object_key
    training = body.tunery.training if body.tunery else None
    max_len = (
        hyperparams.DEFAULT_MAX_SEQ_LENGTH
        if training is None or training.max_seq_length == "auto"
        else int(training.max_seq_length)
    )
    report = _token_report(ctx, f.id, key, body.model, folder, max_len)
    if report["status"] == "error":
        first = (report["errors"]["listed"] or [{"line": None, "message": "no examples"}])[0]
        raise bad_request(
            f"The training file {f.id} is invalid: line {first['line']}: {first['message']}",
            param="training_file",
            code="invalid_training_file",
        )
    n = int(report["examples"])
    fmt = DataFormat(report["format"]) if report.get("format") else None
    problem = check_method_fit(fmt, f.id, body.method.type if body.method else "supervised")
    if problem is None and n < MIN_EXAMPLES:
        problem = JobError(
            ErrorCode.invalid_n_examples,
            f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples",
            "training_file",
        )
    if problem:
        raise bad_request(problem.message, param="training_file", code=problem.code)
    tokens = report["tokens"]
    gpu_type = ctx.settings.gpu_type
    grad_accum = training.gradient_accumulation_steps if training else 1
    hp = hyperparams.resolve(_hyperparameters(body), n, cpu_only=gpu_type == "cpu", grad_accum=grad_accum)
    steps = hyperparams.total_steps(n, hp["batch_size"], hp["n_epochs"])
    try:
        est = estimate(
            model_shape(Path(folder)),
            examples=n,
            tokens_per_epoch=int(tokens["total_within_max_seq_length"]),
            trained_tokens_per_epoch=int(tokens["trained"]),
            n_epochs=hp["n_epochs"],
            batch_size=hp["batch_size"],
            steps=steps,
            max_seq_length=max_len,
            gpu_type=gpu_type,
            adapter=training.adapter if training else "lora",
            lora_r=training.lora.r if training else 16,
            precision=training.precision if training else None,
            trainer=_trainer(body),
        )
    except ValueError as e:
        raise bad_request(str(e), param=None, code="invalid_gpu_type") from None
    return {
        "object": ESTIMATE_OBJECT,
        "model": body.model,
        "training_file": f.id,
        "hyperparameters": hp,
        "estimated_finish": now() + round(est.gpu_seconds),
        **est.as_dict(),
    }
