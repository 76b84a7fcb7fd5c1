"""Preference fine-tuning: DPO, ORPO and KTO on a PEFT LoRA adapter, from the same preference records.

    spec (method dpo | orpo | kto) -> preference JSONL (+ SHA-256) -> conversational rows
         (DPO, ORPO: prompt / chosen / rejected; KTO: prompt / completion / label, two rows per pair)
         -> TRL DPOTrainer | trl.experimental.orpo.ORPOTrainer | KTOTrainer with a LoRA ``peft_config``
         -> the same Metrics / Checkpoint / results.csv / Finished reports as SFT (trainer/run.py)

The reference model of DPO (and KTO) is the base model with the adapter disabled, not a second copy of the weights:
the trainer gets the plain base model, ``ref_model=None`` and a ``peft_config``, so TRL wraps the model with PEFT,
keeps ``trainer.ref_model = None`` and computes the reference log-probs under ``use_adapter(model, None)``, which
is ``PeftModel.disable_adapter()`` (TRL 1.16, ``trl/trainer/dpo_trainer.py``: ``__init__`` "Reference model" and
``_compute_loss``). ORPO has no reference model. Prompts and replies stay conversational: TRL renders them with the
model's chat template (prompt with the generation prompt; prompt + reply for each completion).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.data import PreferenceRecord
from tunery.jobspec import DataFile, JobSpec
from tunery.jobstate import file_error_code
from tunery.storage import ObjectStore

from .chat import ChatTokenizer
from .errors import TrainerError
from .reporter import Reporter
from .resume import make_state_callback, prepare_resume
from .run import (
    DeviceChoice,
    RunResult,
    StopSignal,
    TrainingRun,
    load_base_model,
    lora_config,
    make_callback,
    read_data_file,
    resolve_device,
    set_determinism,
)

log = logging.getLogger("tunery.trainer.preference")

PREFERENCE_METHODS = ("dpo", "orpo", "kto")
# TRL's per-step logs that are reported as method metrics ("rewards/margins" -> "rewards_margins").
METRIC_PREFIXES = ("rewards/", "logps/")
METRIC_NAMES = ("kl", "nll_loss", "log_odds_ratio", "log_odds_chosen")
# Extra columns of results.csv, after OpenAI's five.
RESULTS_EXTRA = ("rewards_accuracies", "rewards_margins", "rewards_chosen", "rewards_rejected")


# ---- the data ----------------------------------------------------------------------------------------------
@dataclass
class PreferenceRead:
    records: list[PreferenceRecord]
    sha256: str
    n_bytes: int


def read_preference_file(store: ObjectStore, data_file: DataFile, param: str) -> PreferenceRead:
    """Read, hash and parse one preference file (OpenAI's input/preferred_output/non_preferred_output or TRL's
    prompt/chosen/rejected); every preference format normalizes to PreferenceRecord."""
    code = file_error_code(param).value
    result, sha, size = read_data_file(store, data_file, param, code)
    if result.format is not None and result.format.kind != "preference":
        raise TrainerError(
            f"{param} {data_file.file_id} is in the {result.format.label} format, but a preference method (dpo, "
            "orpo, kto) needs preference data: input, preferred_output and non_preferred_output per line",
            code=code,
            param=param,
        )
    records = [r for r in result.records if isinstance(r, PreferenceRecord)]
    if not records:
        raise TrainerError(f"{param} {data_file.file_id} contains no examples", code=code, param=param)
    return PreferenceRead(records=records, sha256=sha, n_bytes=size)


def _prompt(record: PreferenceRecord) -> list[dict[str, Any]]:
    return [m.as_template_dict() for m in record.prompt]


def _tools(record: PreferenceRecord) -> str | None:
    # A JSON string: tool schemas differ from line to line, which an Arrow column cannot hold as structs.
    return json.dumps(record.tools) if record.tools else None


def paired_rows(records: list[PreferenceRecord]) -> list[dict[str, Any]]:
    """DPO and ORPO rows in TRL's conversational preference format."""
    rows = [
        {
            "prompt": _prompt(r),
            "chosen": [r.chosen.as_template_dict()],
            "rejected": [r.rejected.as_template_dict()],
            "tools": _tools(r),
        }
        for r in records
    ]
    return _drop_empty_tools(rows)


def kto_rows(records: list[PreferenceRecord], seed: int, shuffle: bool = True) -> list[dict[str, Any]]:
    """KTO's unpaired rows from the same records: each pair gives a desirable example (its preferred reply,
    ``label`` true) and an undesirable one (its rejected reply, ``label`` false), side by side. KTO samples in
    order (its KL term pairs neighbours), so the pairs are shuffled once here, with the job's seed."""
    order = list(records)
    if shuffle:
        random.Random(seed).shuffle(order)
    rows = []
    for r in order:
        prompt, tools = _prompt(r), _tools(r)
        rows.append({"prompt": prompt, "completion": [r.chosen.as_template_dict()], "label": True, "tools": tools})
        rows.append({"prompt": prompt, "completion": [r.rejected.as_template_dict()], "label": False, "tools": tools})
    return _drop_empty_tools(rows)


def _drop_empty_tools(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if any(row["tools"] for row in rows):
        return rows
    return [{k: v for k, v in row.items() if k != "tools"} for row in rows]


def drop_duplicate_pairs(records: list[PreferenceRecord]) -> tuple[list[PreferenceRecord], int]:
    """Exact duplicates (same prompt, same preferred and rejected replies), first kept."""
    seen: set[str] = set()
    kept = []
    for r in records:
        key = json.dumps(
            [_prompt(r), r.chosen.as_template_dict(), r.rejected.as_template_dict(), r.tools], sort_keys=True
        )
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(records) - len(kept)


def pair_lengths(records: list[PreferenceRecord], chat: ChatTokenizer) -> list[int]:
    """Each pair's length in tokens: its longer side, prompt and reply rendered with the chat template (as the
    validation report counts them)."""
    tok = chat.tokenizer
    out = []
    for r in records:
        sides = [chat.render([*r.prompt, reply], tools=r.tools or None) for reply in (r.chosen, r.rejected)]
        out.append(max(len(ids) for ids in tok(sides, add_special_tokens=False)["input_ids"]))
    return out


def drop_long_pairs(
    records: list[PreferenceRecord], chat: ChatTokenizer, max_length: int
) -> tuple[list[PreferenceRecord], int]:
    """``tunery.data.long_examples = "drop"``: the pairs whose longer side fits ``max_length`` tokens, and the
    count dropped (instead of TRL truncating them)."""
    kept = [r for r, n in zip(records, pair_lengths(records, chat), strict=True) if n <= max_length]
    return kept, len(records) - len(kept)


# ---- TRL configuration and trainer ---------------------------------------------------------------------------
def preference_config(spec: JobSpec, output_dir: str, choice: DeviceChoice) -> Any:
    """TRL's config of the spec's method (DPOConfig, ORPOConfig or KTOConfig) from the resolved hyperparameters,
    with the same step, logging, evaluation and checkpoint conventions as SFT (trainer/run.py ``sft_config``)."""
    hp = spec.hyperparameters
    accum = hp.gradient_accumulation_steps
    if accum < 1 or hp.batch_size % accum:
        raise TrainerError(
            f"gradient_accumulation_steps ({accum}) must divide batch_size ({hp.batch_size})",
            code="invalid_hyperparameters",
        )
    # batch_size counts preference pairs; a KTO pair is two rows (desirable + undesirable), side by side.
    rows_per_pair = 2 if spec.method == "kto" else 1
    micro_batch = hp.batch_size // accum * rows_per_pair
    beta = spec.preference.beta if spec.preference is not None else 0.1
    common: dict[str, Any] = dict(
        output_dir=output_dir,
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=accum,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=hp.warmup_steps if hp.warmup_steps is not None else hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        seed=spec.seed,
        data_seed=spec.seed,
        max_length=hp.max_seq_length,
        beta=beta,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,
        eval_strategy="no",  # driven by ReportingCallback.on_step_end, as for SFT
        save_strategy="no",
        report_to=[],
        push_to_hub=False,
        disable_tqdm=True,
        log_level="warning",
        dataloader_num_workers=0,
        dataloader_pin_memory=choice.device == "cuda",
        use_cpu=choice.device == "cpu",
        bf16=choice.bf16,
        fp16=False,
        activation_checkpointing=choice.device == "cuda",
    )
    if spec.method == "dpo":
        from trl import DPOConfig

        return DPOConfig(**common, precompute_ref_log_probs=False)
    if spec.method == "orpo":
        # ORPO lives in trl.experimental in TRL 1.x; its beta is the paper's lambda (weight of the odds-ratio term).
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common)
    if spec.method == "kto":
        from trl import KTOConfig

        # Sequential: rows stay in the (seeded, shuffled) order of kto_rows, so a batch holds whole pairs.
        return KTOConfig(**common, precompute_ref_log_probs=False, train_sampling_strategy="sequential")
    raise TrainerError(f"unknown preference method {spec.method!r} (expected one of {', '.join(PREFERENCE_METHODS)})")


def build_preference_trainer(
    method: str,
    model: Any,
    tokenizer: Any,
    args: Any,
    peft_config: Any,
    train_rows: list[dict[str, Any]],
    valid_rows: list[dict[str, Any]] | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """TRL's trainer of ``method`` over conversational rows, with a LoRA ``peft_config`` and no ``ref_model``."""
    from datasets import Dataset
    from transformers import PrinterCallback

    train = Dataset.from_list(train_rows)
    valid = Dataset.from_list(valid_rows) if valid_rows else None
    kwargs: dict[str, Any] = dict(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer: Any
    if method == "dpo":
        from trl import DPOTrainer

        trainer = DPOTrainer(ref_model=None, **kwargs)
    elif method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        trainer = ORPOTrainer(**kwargs)
    elif method == "kto":
        from trl import KTOTrainer

        trainer = KTOTrainer(ref_model=None, **kwargs)
    else:
        raise TrainerError(f"unknown preference method {method!r}")
    trainer.remove_callback(PrinterCallback)
    return trainer


def dataset_tokens(dataset: Any) -> int:
    """Tokens one epoch of TRL's tokenized dataset runs through the model (prompt once per sequence)."""
    names = set(dataset.column_names)
    total = 0
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= names:  # DPO
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True):
            total += 2 * len(p) + len(c) + len(r)
    elif {"chosen_input_ids", "rejected_input_ids"} <= names:  # ORPO: prompt + reply per sequence
        for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"], strict=True):
            total += len(c) + len(r)
    elif {"prompt_ids", "completion_ids"} <= names:  # KTO
        for p, c in zip(dataset["prompt_ids"], dataset["completion_ids"], strict=True):
            total += len(p) + len(c)
    return total


def method_metric_name(key: str) -> str | None:
    if key.startswith(METRIC_PREFIXES) or key in METRIC_NAMES:
        return key.replace("/", "_")
    return None


# ---- the run -------------------------------------------------------------------------------------------------
class PreferenceRun(TrainingRun):
    """A TrainingRun whose data are preference pairs and whose steps also report the method's figures (the reward
    figures also go to the results file; train_accuracy there is the preferred replies' token accuracy)."""

    results_extra = RESULTS_EXTRA

    def method_metrics(self, logs: dict[str, Any]) -> dict[str, float]:
        out = {}
        for key, value in logs.items():
            name = method_metric_name(key)
            if name is not None and isinstance(value, int | float):
                out[name] = float(value)
        return out

    def read_preferences(self) -> tuple[PreferenceRead, PreferenceRead | None]:
        spec = self.spec
        train = read_preference_file(self.store, spec.training_file, "training_file")
        self.record_file("training_file", spec.training_file, train.sha256, len(train.records))
        valid = None
        if spec.validation_file is not None:
            valid = read_preference_file(self.store, spec.validation_file, "validation_file")
            self.record_file("validation_file", spec.validation_file, valid.sha256, len(valid.records))
        log.info(
            "data: training %d preference pairs (sha256 %s)%s",
            len(train.records),
            train.sha256,
            f", validation {len(valid.records)} pairs (sha256 {valid.sha256})" if valid else "",
        )
        return train, valid

    def manifest(self, step: int, epoch: float, metrics: dict[str, Any], best: bool = False) -> dict[str, Any]:
        out = super().manifest(step, epoch, metrics, best=best)
        out["preference"] = {
            **(self.spec.preference.model_dump() if self.spec.preference else {}),
            "reference_model": None if self.spec.method == "orpo" else "base model, adapter disabled",
        }
        return out


def _rows(method: str, records: list[PreferenceRecord], seed: int) -> list[dict[str, Any]]:
    return kto_rows(records, seed) if method == "kto" else paired_rows(records)


def run_preference(spec: JobSpec, reporter: Reporter, stop: StopSignal) -> RunResult:
    """Train one LoRA adapter with the spec's preference method; raises TrainerError or RunStopped otherwise."""
    hp = spec.hyperparameters
    if spec.method not in PREFERENCE_METHODS:
        raise TrainerError(f"unknown preference method {spec.method!r}")
    if hp.n_epochs < 1 or hp.batch_size < 1 or hp.max_seq_length < 2 or not hp.learning_rate > 0:
        raise TrainerError("n_epochs, batch_size, max_seq_length and learning_rate must be positive")
    r = PreferenceRun(spec, reporter, stop)
    train_data, valid_data = r.read_preferences()
    records = train_data.records
    if spec.data is not None and spec.data.drop_duplicates:
        records, dropped = drop_duplicate_pairs(records)
        message = f"Data options: {dropped} duplicate preference pair(s) dropped; {len(records)} left"
        log.info("%s", message)
        reporter.event("info", message, {"duplicates_dropped": dropped, "examples": len(records)})
    stop.check()

    r.device = resolve_device(spec.device)
    set_determinism(spec.seed)
    t0 = time.monotonic()
    model, tokenizer = load_base_model(spec.base_model_path, r.device)
    r.tokenizer = tokenizer
    log.info("base model %s loaded on %s in %.1fs", spec.base_model, r.device.device, time.monotonic() - t0)
    stop.check()
    if spec.data is not None and spec.data.long_examples == "drop":
        records, dropped = drop_long_pairs(records, ChatTokenizer(tokenizer), hp.max_seq_length)
        message = (
            f"Data options: {dropped} preference pair(s) longer than max_seq_length={hp.max_seq_length} tokens "
            f"dropped; {len(records)} left"
        )
        log.info("%s", message)
        reporter.event("info", message, {"long_dropped": dropped, "examples": len(records)})
        if not records:
            raise TrainerError(
                f"training_file: no preference pair fits within max_seq_length={hp.max_seq_length} "
                '(tunery.data.long_examples is "drop")',
                code="invalid_training_file",
                param="training_file",
            )

    train_rows = _rows(spec.method, records, spec.seed)
    valid_rows = _rows(spec.method, valid_data.records, spec.seed) if valid_data is not None else None
    r.has_eval = valid_rows is not None
    with tempfile.TemporaryDirectory(prefix="tunery-trainer-") as workdir:
        args = preference_config(spec, workdir, r.device)
        callbacks = [make_callback(r), make_state_callback(r)]  # metrics and checkpoints; resumable states
        try:
            r.trainer = build_preference_trainer(
                spec.method, model, tokenizer, args, lora_config(spec), train_rows, valid_rows, callbacks
            )
        except ValueError as e:  # TRL refuses a configuration with a message that names the option
            raise TrainerError(f"{spec.method}: {e}", code="invalid_hyperparameters") from e
        dataset = r.trainer.train_dataset
        rows_per_pair = 2 if spec.method == "kto" else 1
        n_pairs = -(-len(dataset) // rows_per_pair)
        if n_pairs < len(records):
            r.warn(
                f"{len(records) - n_pairs} of {len(records)} preference pairs have a prompt longer than "
                f"max_seq_length={hp.max_seq_length} tokens and were skipped",
                {"file": "training_file", "skipped": len(records) - n_pairs, "max_seq_length": hp.max_seq_length},
            )
        if n_pairs == 0:
            raise TrainerError(
                f"training_file: no preference pair fits within max_seq_length={hp.max_seq_length}",
                code="invalid_training_file",
                param="training_file",
            )
        r.plan(n_pairs)
        resume_dir = prepare_resume(r, spec.resume_from, Path(workdir))
        r.tokens_per_epoch = r.trained_tokens_per_epoch = dataset_tokens(dataset)
        log.info(
            "%s: %d pairs, %d tokens per epoch, %d steps per epoch, %d steps, beta %s",
            spec.method,
            n_pairs,
            r.tokens_per_epoch,
            r.steps_per_epoch,
            r.total_steps,
            args.beta,
        )
        stop.check()
        reporter.started(
            r.total_steps,
            n_pairs,
            r.tokens_per_epoch,
            {**hp.model_dump(), "method": spec.method, "beta": args.beta},
        )
        stop.check()
        train_seconds, final_prefix, results_key = r.train_to_end(resume_dir)

    log.info("done: %d %s steps in %.1fs, final model -> %s", len(r.rows), spec.method, train_seconds, final_prefix)
    return RunResult(
        total_steps=r.total_steps,
        tokens_per_epoch=r.tokens_per_epoch,
        trained_tokens=r.tokens_per_epoch * hp.n_epochs,
        train_examples=n_pairs,
        model_prefix=final_prefix,
        results_key=results_key,
        rows=r.rows,
        checkpoints=r.checkpoints,
        train_seconds=train_seconds,
    )
