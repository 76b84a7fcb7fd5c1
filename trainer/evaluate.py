"""An evaluation run (a job of kind ``evaluation``, docs/evals.md): the eval report of an existing ``ft:`` model or
checkpoint model against one file, the base model as its baseline.

    spec -> the file (chat or preference examples, + SHA-256) -> base model + tokenizer -> the base is measured
         -> the model's adapter (or whole weights) from the object store -> the model is measured
         -> EvalReport at jobs/<evaluation id>/eval_report.json -> Finished

It reuses what a fine-tuning run's reports use (trainer/evaluation.py's :class:`Evaluator`, on a
:class:`trainer.base.TrainingRun` that never trains), so an evaluation's report has exactly the sections and the
typed shape of a job's: validation loss and its change, per-example percentiles and the hardest examples, seeded
greedy samples, the forgetting check and, for preference data, DPO's implicit rewards. The plan in the spec is the
plan of the job that made the model (its max_seq_length, its beta); a preference file scored for a model trained
without one takes DPO's default beta. ``python -m trainer`` dispatches here on the spec's ``task``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery import layout
from tunery.evalreport import EvalOptions, EvalReport
from tunery.jobspec import JobSpec
from tunery.jobstate import EVAL_FILE_PARAM, ErrorCode
from tunery.storage import ObjectStore, open_store

from .base import StopSignal, TrainingRun
from .checkpoint import MANIFEST
from .data_files import RECORD_TYPES, DataFileRead, read_data_file
from .errors import TrainerError
from .evaluation import Evaluator
from .judge import grader_models
from .loading import fetch_model_files, load_base_model, load_parent_adapter, resolve_device, set_determinism
from .methods import get_method
from .reporter import Reporter
from .run import chat_tokenizer

log = logging.getLogger("tunery.trainer.evaluate")

DEFAULT_BETA = 0.1  # DPO's, for the rewards of a preference file scored for a model trained without a beta
# What the file of an evaluation may hold: examples with an answer to score, or prompts for a grader (a reinforcement
# job's model, graded by its job's grader).
SCORABLE = ("supervised", "preference")
GRADED = "reinforcement"


@dataclass
class EvaluationResult:
    report_key: str
    report: EvalReport
    seconds: float


def read_eval_file(store: ObjectStore, spec: JobSpec) -> tuple[DataFileRead, str]:
    """The evaluation's file and the kind of its examples (chat: ``supervised``, ``preference``, or
    ``reinforcement`` prompts for a model a reinforcement job made, graded by its grader). Other data (reinforcement
    prompts for a model with no grader) is a TrainerError ``invalid_file``."""
    code = ErrorCode.invalid_file.value
    data_file = spec.data_file()
    result, sha, size = read_data_file(store, data_file, EVAL_FILE_PARAM, code)
    kind = result.format.kind if result.format is not None else "supervised"
    if kind not in SCORABLE and not (kind == GRADED and spec.plan.reinforcement is not None):
        raise TrainerError(
            f"file {data_file.file_id} holds {kind} data: an evaluation scores chat or preference examples "
            "(each with the answer to score), or grades reinforcement prompts with the grader of the reinforcement "
            "job that made the model",
            code=code,
            param=EVAL_FILE_PARAM,
        )
    records = [r for r in result.records if isinstance(r, RECORD_TYPES[kind])]
    if not records:
        raise TrainerError(f"file {data_file.file_id} contains no examples", code=code, param=EVAL_FILE_PARAM)
    return DataFileRead(records=records, sha256=sha, n_bytes=size), kind


def model_manifest(store: ObjectStore, prefix: str) -> dict[str, Any]:
    """The manifest of the model an evaluation or an export reads (its step and epoch); a model without one is
    incomplete."""
    try:
        return dict(json.loads(store.get_bytes(f"{prefix.rstrip('/')}/{MANIFEST}")))
    except Exception as e:
        raise TrainerError(
            f"the model has no complete files under {prefix}", code="model_not_available", param="model"
        ) from e


def load_full_model(store: ObjectStore, prefix: str, folder: Path, device: Any) -> Any:
    """A fully fine-tuned model's weights (safetensors, config, tokenizer) from the object store."""
    return load_base_model(str(fetch_model_files(store, prefix, folder)), device)[0]


def evaluate(
    spec: JobSpec, reporter: Reporter, stop: StopSignal | None = None, store: ObjectStore | None = None
) -> EvaluationResult:
    """Write the report of ``spec.fine_tuned_model`` against ``spec.training_file``; raises TrainerError or
    RunStopped when the evaluation does not succeed."""
    started = time.monotonic()
    stop = stop or StopSignal()
    model_prefix = spec.init_adapter_prefix
    if model_prefix is None:
        raise TrainerError("an evaluation needs the model's files (init_adapter_prefix)", param="model")
    options = spec.eval or EvalOptions()
    plan = spec.plan
    store = store or open_store(spec.object_store)
    data, kind = read_eval_file(store, spec)
    if kind == "preference" and plan.beta is None:
        plan = plan.model_copy(update={"beta": DEFAULT_BETA})
    spec = spec.model_copy(update={"plan": plan})
    r = TrainingRun(spec, reporter, stop, get_method(plan.method), store)
    data_file = spec.data_file()
    r.record_file(EVAL_FILE_PARAM, data_file, data.sha256, len(data.records))
    manifest = model_manifest(store, model_prefix)
    stop.check()

    r.device = resolve_device(spec.device, plan.precision, plan.adapter, plan.gradient_checkpointing)
    set_determinism(spec.seed)
    model, tokenizer = load_base_model(spec.base_model_path, r.device)
    r.tokenizer = tokenizer
    with tempfile.TemporaryDirectory(prefix="tunery-evaluate-") as workdir:
        graded = kind == GRADED  # a reinforcement file: its grader's models, as the job loaded them
        judge, embedder = (
            grader_models(spec, store, r.device.device, r.device.dtype, workdir) if graded else (None, None)
        )
        evaluator = Evaluator(r, chat_tokenizer(model, tokenizer), options, judge, embedder)
        # the file is the validation file: every figure and sample comes from it
        evaluator.prepare(data, data, kind)
        reporter.event(
            "info",
            f"Evaluating {spec.fine_tuned_model} against {data_file.file_id} ({len(data.records)} examples)",
            {"model": spec.fine_tuned_model, "file": data_file.file_id, "examples": len(data.records)},
        )
        stop.check()
        evaluator.measure_baseline(model)
        stop.check()
        if plan.adapter == "full":
            del model
            model = load_full_model(store, model_prefix, Path(workdir) / "model", r.device)
        else:
            model = load_parent_adapter(store, model_prefix, model, workdir)
        stop.check()
        report = evaluator.report(
            model,
            spec.fine_tuned_model,
            int(manifest.get("step") or 0),
            float(manifest.get("epoch") or 0.0),
            (manifest.get("metrics") or {}).get("train_loss"),
        )
    report = report.model_copy(update={"baseline": "the base model", "evaluated_file": data_file.file_id})
    key = layout.eval_report_key(spec.output_prefix)
    store.put_bytes(key, report.model_dump_json(indent=2).encode())
    log.info("evaluation of %s written to %s", spec.fine_tuned_model, key)
    return EvaluationResult(report_key=key, report=report, seconds=time.monotonic() - started)
