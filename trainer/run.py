"""One training run, whatever its method: JobSpec in; checkpoints, results and gRPC reports out.

    spec -> object store -> data records (+ SHA-256) -> base model + tokenizer -> the method's datasets
         -> the method's TRL trainer (config from the plan) on the job's adapter -> Metrics every step,
            Checkpoint at the planned steps -> {output_prefix}/model/ + results.csv -> Finished

The method (``trainer/methods/``) says how records become its TRL trainer's dataset and which TRL classes it pairs;
the rest is this driver's and :class:`trainer.base.TrainingRun`'s. ``python -m trainer --spec ...``
(``trainer/__main__.py``) wraps :func:`run` with signal handling and failure reporting.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tunery.jobspec import JobSpec
from tunery.storage import ObjectStore, open_store

from .base import RunResult, StopSignal, TrainingRun
from .chat import ChatTemplateError, ChatTokenizer, end_of_turn_tokens
from .config import trl_config
from .errors import RunStopped, TrainerError
from .evaluation import Evaluator
from .generation import TRANSFORMERS, VLLM, release_memory, resolve_generation, vllm_start_failure
from .integrations import Trackers
from .judge import grader_models
from .loading import attach_adapter, load_base_model, resolve_device, set_determinism
from .methods import get_method
from .metrics import make_callback
from .reporter import Reporter
from .resume import make_state_callback, prepare_resume

log = logging.getLogger("tunery.trainer")

__all__ = ["RunResult", "StopSignal", "configure_logging", "load_spec", "run", "spec_summary"]


def load_spec(ref: str, store_at: Callable[[str], ObjectStore] = open_store) -> JobSpec:
    """A JobSpec from a local JSON path (or ``file://`` URL), or from ``<object_store_url>#<key>`` (the store opened
    with ``store_at``: a brokered trainer's, trainer/brokered.py)."""
    if "#" in ref and "://" in ref.split("#", 1)[0]:
        url, key = ref.rsplit("#", 1)
        data = store_at(url).get_bytes(key)
    else:
        parsed = urlparse(ref)
        path = unquote(parsed.path) if parsed.scheme == "file" else ref
        data = Path(path).read_bytes()
    return JobSpec.model_validate_json(data)


def chat_tokenizer(model: Any, tokenizer: Any) -> ChatTokenizer:
    """The chat template renderer, ending each assistant turn at the model's end-of-turn tokens."""
    eos_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra_eos = eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else []
    try:
        return ChatTokenizer(tokenizer, end_of_turn_tokens(tokenizer, extra_eos))
    except ChatTemplateError as e:
        raise TrainerError(str(e)) from e


def run(
    spec: JobSpec, reporter: Reporter, stop: StopSignal | None = None, store: ObjectStore | None = None
) -> RunResult:
    """Train as the spec's plan says, reading and writing ``store`` (the spec's, opened here, when None); raises
    TrainerError or RunStopped when the run does not succeed."""
    stop = stop or StopSignal()
    plan = spec.plan
    method = get_method(plan.method)
    r = TrainingRun(spec, reporter, stop, method, store)
    train_data, valid_data = r.read_data()
    method.prepare_records(r, train_data)
    stop.check()

    r.device = resolve_device(spec.device, plan.precision, plan.adapter, plan.gradient_checkpointing)
    if plan.reinforcement is not None:
        r.device.generation = resolve_generation(spec.generation, r.device.device)
    set_determinism(spec.seed)
    t0 = time.monotonic()
    model, tokenizer = load_base_model(spec.base_model_path, r.device)
    r.tokenizer = tokenizer
    log.info(
        "base model %s loaded from %s on %s (%s) in %.1fs",
        spec.base_model,
        spec.base_model_path,
        r.device.device,
        str(r.device.dtype).removeprefix("torch."),
        time.monotonic() - t0,
    )
    stop.check()
    chat = chat_tokenizer(model, tokenizer)
    datasets = method.build_datasets(r, chat, train_data, valid_data)
    r.has_eval = datasets.valid is not None

    with tempfile.TemporaryDirectory(prefix="tunery-trainer-") as workdir:
        ref_model = load_base_model(spec.base_model_path, r.device)[0] if method.needs_reference_copy(plan) else None
        # A score_model grader's judges and a cosine metric's embedding model, beside the policy.
        judge, embedder = grader_models(spec, r.store, r.device.device, r.device.dtype, workdir)
        if spec.eval is not None and spec.eval.enabled and method.writes_eval_reports:
            # a reinforcement job's judge and embedding model grade its report too
            r.evaluator = Evaluator(r, chat, spec.eval, judge, embedder)
            r.evaluator.prepare(train_data, valid_data)
        callbacks = [make_callback(r), make_state_callback(r)]  # metrics and checkpoints; resumable states
        while r.trainer is None:
            args = trl_config(
                method, plan, seed=spec.seed, output_dir=workdir, choice=r.device, model_path=spec.base_model_path
            )
            model, peft_config = attach_adapter(model, plan, r.store, spec.init_adapter_prefix, workdir)
            try:
                r.trainer = method.build_trainer(
                    model,
                    tokenizer,
                    args,
                    peft_config,
                    datasets,
                    callbacks,
                    ref_model,
                    plan=plan,
                    judge=judge,
                    embedder=embedder,
                )
            except Exception as e:
                warning = vllm_start_failure(e, spec.generation) if r.device.generation == VLLM else None
                if warning is None:
                    if isinstance(e, ValueError):  # TRL refuses a configuration with a message naming the option
                        raise TrainerError(f"{plan.method}: {e}", code="invalid_hyperparameters") from e
                    raise
                r.warn(warning)
            if r.trainer is None:  # vLLM did not start: generate samples, from the base model loaded anew
                r.device.generation = TRANSFORMERS  # (the failed trainer had put the adapter's layers into it)
                del model, peft_config, args
                release_memory(r.device.device)
                model = load_base_model(spec.base_model_path, r.device)[0]
        n_examples = method.count_examples(r, r.trainer, datasets)
        r.plan_steps(n_examples)
        resume_dir = prepare_resume(r, spec.resume_from, Path(workdir))
        if r.evaluator is not None:  # the model as the job starts it: resume states load inside train()
            r.evaluator.measure_baseline(r.trainer.model)
        log.info(
            "%s: %d training examples, %d tokens per epoch (%d trained), %d steps per epoch, %d steps",
            plan.method,
            n_examples,
            r.tokens_per_epoch,
            r.trained_tokens_per_epoch,
            r.steps_per_epoch,
            r.total_steps,
        )
        stop.check()
        reporter.started(r.total_steps, n_examples, r.tokens_per_epoch, plan.model_dump())
        stop.check()
        r.trackers = Trackers.of(spec, r.warn)
        if r.trackers is not None:
            r.trackers.start(tracker_config(r, n_examples))
        try:
            train_seconds, final_prefix, results_key = r.train_to_end(resume_dir)
        except BaseException as e:
            if r.trackers is not None:
                r.trackers.close("stopped" if isinstance(e, RunStopped) else "failed")
            raise
        if r.trackers is not None:
            r.trackers.close("succeeded", summary={"fine_tuned_model": spec.fine_tuned_model})

    total_tokens = sum(row.tokens or 0 for row in r.rows)
    log.info(
        "done: %d steps in %.1fs (%.1f tokens/s), final model -> %s",
        len(r.rows),
        train_seconds,
        total_tokens / train_seconds if train_seconds > 0 else 0.0,
        final_prefix,
    )
    return RunResult(
        total_steps=r.total_steps,
        tokens_per_epoch=r.tokens_per_epoch,
        trained_tokens=r.tokens_per_epoch * plan.n_epochs,
        train_examples=n_examples,
        model_prefix=final_prefix,
        results_key=results_key,
        rows=r.rows,
        checkpoints=r.checkpoints,
        train_seconds=train_seconds,
        eval_seconds=r.evaluator.seconds if r.evaluator is not None else 0.0,
    )


def tracker_config(r: TrainingRun, n_examples: int) -> dict[str, Any]:
    """What a job's experiment trackers record of its run (W&B's config, MLflow's params): who it is and the resolved
    hyperparameters (docs/integrations.md)."""
    spec = r.spec
    return {
        "job_id": spec.job_id,
        "base_model": spec.base_model,
        "fine_tuned_model": spec.fine_tuned_model,
        "method": spec.plan.method,
        "seed": spec.seed,
        "train_examples": n_examples,
        "total_steps": r.total_steps,
        "tokens_per_epoch": r.tokens_per_epoch,
        "hyperparameters": spec.plan.model_dump(),
    }


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Deprecation notices of the ML libraries are for us, not for the job's log.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft|accelerate)(\.|$)")
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_progress_bar()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_warning()
    except ImportError:  # pragma: no cover - the trainer image always has them
        pass


def spec_summary(spec: JobSpec) -> str:
    return json.dumps(
        {
            "job_id": spec.job_id,
            "base_model": spec.base_model,
            "task": spec.task.value,
            "model": spec.fine_tuned_model,
            "training_file": spec.training_file.file_id if spec.training_file else None,
            "validation_file": spec.validation_file.file_id if spec.validation_file else None,
            "data": spec.data.model_dump() if spec.data else None,
            "plan": spec.plan.model_dump(),
            "seed": spec.seed,
            "device": spec.device,
        },
        sort_keys=True,
    )
