"""One supervised fine-tuning run: JobSpec in; adapter checkpoints, results and gRPC reports out.

    spec -> object store -> chat JSONL (+ SHA-256) -> base model + tokenizer -> token ids + assistant mask
         -> TRL SFTTrainer with a PEFT LoRA adapter -> Metrics every step, Checkpoint every epoch
         -> {output_prefix}/model/ + results.csv -> Finished

``python -m trainer --spec ...`` (``trainer/__main__.py``) wraps :func:`run` with signal handling and
failure reporting.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from tunery.data import ChatRecord, ParseResult
from tunery.data_jsonl import parse_jsonl
from tunery.hyperparams import spaced_steps
from tunery.jobspec import DataFile, JobSpec
from tunery.jobstate import MIX_PARAM, file_error_code
from tunery.storage import ObjectNotFound, ObjectStore, open_store

from .chat import ChatTemplateError, ChatTokenizer, TokenizedSet, end_of_turn_tokens
from .checkpoint import (
    MANIFEST,
    MANIFEST_FORMAT,
    checkpoint_prefix,
    library_versions,
    model_prefix,
    sha256_text,
    upload_checkpoint,
    utc_now,
)
from .data_options import DataOptionsReport, apply_options
from .errors import RunStopped, TrainerError
from .reporter import Reporter
from .resume import PREEMPT_REASONS, drop_states, make_state_callback, prepare_resume

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger("tunery.trainer")

RESULTS_HEADER = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


# ---- the spec and the data --------------------------------------------------------------------------------
def load_spec(ref: str) -> JobSpec:
    """A JobSpec from a local JSON path (or ``file://`` URL), or from ``<object_store_url>#<key>``."""
    if "#" in ref and "://" in ref.split("#", 1)[0]:
        url, key = ref.rsplit("#", 1)
        data = open_store(url).get_bytes(key)
    else:
        parsed = urlparse(ref)
        path = unquote(parsed.path) if parsed.scheme == "file" else ref
        data = Path(path).read_bytes()
    return JobSpec.model_validate_json(data)


@dataclass
class DataFileRead:
    records: list[ChatRecord]
    sha256: str
    n_bytes: int


def read_data_file(store: ObjectStore, data_file: DataFile, param: str, code: str) -> tuple[ParseResult, str, int]:
    """Read, hash and parse one training or validation file: (parse result, SHA-256, bytes). A missing file, one
    changed since it was validated, or one with invalid lines is a TrainerError with ``code``."""
    digest = hashlib.sha256()
    size = 0

    def chunks() -> Any:
        nonlocal size
        for chunk in store.iter_chunks(data_file.key):
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    try:
        result = parse_jsonl(chunks())
    except ObjectNotFound as e:
        raise TrainerError(
            f"{param} {data_file.file_id} is missing from the object store", code=code, param=param
        ) from e
    sha = digest.hexdigest()
    if data_file.sha256 and data_file.sha256 != sha:
        raise TrainerError(
            f"{param} {data_file.file_id} changed after it was validated (SHA-256 mismatch)", code=code, param=param
        )
    if result.n_errors:
        raise TrainerError(
            f"{param} {data_file.file_id} has {result.n_errors} invalid line(s); first: {result.errors[0]}",
            code=code,
            param=param,
        )
    return result, sha, size


def read_chat_file(store: ObjectStore, data_file: DataFile, param: str) -> DataFileRead:
    """Read and parse one supervised training file (chat, completion, alpaca or sharegpt) from the store, hashing
    it on the way; every supervised format normalizes to ChatRecord."""
    code = file_error_code(param).value
    result, sha, size = read_data_file(store, data_file, param, code)
    if result.format is not None and result.format.kind != "supervised":
        raise TrainerError(
            f"{param} {data_file.file_id} is in the {result.format.label} format (preference data), but this trainer "
            "runs supervised fine-tuning only",
            code=code,
            param=param,
        )
    records = [r for r in result.records if isinstance(r, ChatRecord)]
    if not records:
        raise TrainerError(f"{param} {data_file.file_id} contains no examples", code=code, param=param)
    return DataFileRead(records=records, sha256=sha, n_bytes=size)


# ---- model and training configuration ---------------------------------------------------------------------
@dataclass
class DeviceChoice:
    device: str  # cpu | cuda
    dtype: Any  # torch dtype of the base weights (QLoRA: of the layers left unquantized, and the compute dtype)
    bf16: bool  # mixed precision of the Trainer
    fp16: bool = False
    precision: str = "fp32"  # bf16 | fp16 | fp32, as resolved
    adapter: str = "lora"  # lora | qlora | full


PRECISION_PARAM = "tunery.training.precision"
ADAPTER_PARAM = "tunery.training.adapter"


def resolve_device(requested: str, precision: str = "auto", adapter: str = "lora") -> DeviceChoice:
    """Device and precision of the run (docs/adapters.md): ``auto`` is bf16 on a GPU that supports it, fp16 on an
    older GPU, fp32 on the CPU. Anything the hardware cannot run is an error here, before the model is loaded."""
    import torch

    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise TrainerError(f"unknown device {requested!r} (expected auto, cpu or cuda)")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainerError("the job asks for a CUDA GPU but none is available to the trainer")
    device = "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    precision = (precision or "auto").lower()
    if precision == "auto":
        precision = "fp32" if device == "cpu" else "bf16" if bf16_ok else "fp16"
    if precision not in ("bf16", "fp16", "fp32"):
        raise TrainerError(f"unknown precision {precision!r}", code="unsupported_hardware", param=PRECISION_PARAM)
    if precision in ("bf16", "fp16") and device == "cpu":
        raise TrainerError(
            f"precision {precision!r} needs a GPU; this trainer runs on the CPU",
            code="unsupported_hardware",
            param=PRECISION_PARAM,
        )
    if precision == "bf16" and not bf16_ok:
        raise TrainerError(
            "precision 'bf16' needs a GPU with bf16 support; this GPU has none (use 'fp16')",
            code="unsupported_hardware",
            param=PRECISION_PARAM,
        )
    if adapter == "qlora":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainerError(
                "adapter 'qlora' needs bitsandbytes, which is not installed in the trainer's environment",
                code="unsupported_hardware",
                param=ADAPTER_PARAM,
            )
    # Weights: bf16 in bf16; fp16 mixed precision keeps fp32 weights for full fine-tuning (the gradient scaler needs
    # fp32 master weights) and fp16 frozen base weights under an adapter (its own weights stay fp32).
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        precision, torch.float32 if adapter == "full" else torch.float16
    )
    return DeviceChoice(device, dtype, precision == "bf16", precision == "fp16", precision, adapter)


def quantization_config(choice: DeviceChoice) -> Any:
    """QLoRA: the base model's linear layers in 4-bit NF4 (bitsandbytes), computing in bf16 on a GPU (fp16 on one
    without bf16) and in fp32 on the CPU; the LoRA adapters on top train in that compute dtype or higher."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=choice.dtype,
    )


def load_base_model(path: str, choice: DeviceChoice) -> tuple[Any, Any]:
    """The base model (safetensors only, no remote code) and its tokenizer, from a local folder; QLoRA loads it in
    4-bit NF4 and prepares it for k-bit training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise TrainerError(f"base model folder {path} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise TrainerError(f"base model folder {path} has no safetensors weights")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra: dict[str, Any] = {}
    if choice.adapter == "qlora":
        extra = {"quantization_config": quantization_config(choice), "device_map": {"": choice.device}}
    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        dtype=choice.dtype,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        **extra,
    )
    if choice.adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=choice.device == "cuda")
    return model, tokenizer


def load_parent_adapter(store: ObjectStore, prefix: str, model: Any, workdir: str) -> Any:
    """Fine-tuning a fine-tuned model: the parent's LoRA adapter (safetensors, from the object store) on the base
    model, trainable, so training continues from it. Pickles are never copied."""
    from peft import PeftModel

    prefix = prefix.strip("/") + "/"
    folder = Path(workdir) / "parent-adapter"
    folder.mkdir(parents=True, exist_ok=True)
    names = {key[len(prefix) :]: key for key in store.list(prefix) if "/" not in key[len(prefix) :]}
    wanted = ("adapter_config.json", "adapter_model.safetensors")
    if any(n not in names for n in wanted):
        raise TrainerError(
            f"the fine-tuned model to start from has no LoRA adapter under {prefix}",
            code="model_not_available",
            param="model",
        )
    for name in wanted:
        store.get_file(names[name], folder / name)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


def lora_config(spec: JobSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(spec: JobSpec, output_dir: str, choice: DeviceChoice, has_eval: bool) -> Any:
    """TRL's config from the resolved hyperparameters. Evaluations and checkpoints are driven by our callback at
    the steps of :func:`tunery.hyperparams.spaced_steps`, so TRL's own strategies are off."""
    from trl import SFTConfig

    hp = spec.hyperparameters
    if not 0.0 <= hp.warmup_ratio < 1.0:
        raise TrainerError(f"warmup_ratio must be in [0, 1), got {hp.warmup_ratio}", code="invalid_hyperparameters")
    accum = hp.gradient_accumulation_steps
    if accum < 1 or hp.batch_size % accum:
        raise TrainerError(
            f"gradient_accumulation_steps ({accum}) must divide batch_size ({hp.batch_size})",
            code="invalid_hyperparameters",
        )
    micro_batch = hp.batch_size // accum
    # Padding-free packing: TRL's collator joins a micro-batch's examples into one row with position ids that
    # restart at 0 for each example; transformers turns them into a block-diagonal causal mask (sdpa, eager) or
    # varlen boundaries (flash attention). One example per micro-batch has no padding to remove.
    padding_free = hp.packing and micro_batch > 1
    return SFTConfig(
        output_dir=output_dir,
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=accum,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        # An int counts steps; a float in [0, 1) is a ratio of the total steps.
        warmup_steps=hp.warmup_steps if hp.warmup_steps is not None else hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        seed=spec.seed,
        data_seed=spec.seed,
        # Already truncated by us (and counted); TRL's cut would be a no-op, and it refuses one when padding-free.
        max_length=None if padding_free else hp.max_seq_length,
        packing=False,  # TRL's packing regroups examples into rows, which would change what a step is
        padding_free=padding_free,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,  # report a NaN loss as NaN, do not paper over it
        eval_strategy="no",  # see ReportingCallback.on_step_end
        prediction_loss_only=True,
        save_strategy="no",  # checkpoints are ours (object store + manifest)
        report_to=[],
        push_to_hub=False,
        disable_tqdm=True,
        log_level="warning",
        dataloader_num_workers=0,
        dataloader_pin_memory=choice.device == "cuda",
        use_cpu=choice.device == "cpu",
        bf16=choice.bf16,
        fp16=choice.fp16,
        activation_checkpointing=choice.device == "cuda",
    )


def build_trainer(
    model: Any,
    tokenizer: Any,
    args: Any,
    peft_config: Any,
    train: TokenizedSet,
    valid: TokenizedSet | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> Any:
    """The TRL SFTTrainer over pre-tokenized ``input_ids`` + ``assistant_masks`` (labels -100 off the mask)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(train.columns()),
        eval_dataset=Dataset.from_dict(valid.columns()) if valid is not None else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # we print our own one-line progress
    return trainer


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def set_determinism(seed: int) -> None:
    import torch
    from transformers import set_seed

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every torch.empty() with NaN, which makes CPU training ~8x slower.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = False


# ---- per-step metrics --------------------------------------------------------------------------------------
@dataclass
class StepRow:
    step: int
    epoch: float
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    tokens: int | None = None  # non-padding tokens in this step's batch
    seconds: float | None = None  # wall time of this optimizer step
    extra: dict[str, float] = field(default_factory=dict)  # the method's own figures (TrainingRun.method_metrics)

    def to_proto(self, pb: Any, total_steps: int) -> Any:
        optional = {
            k: float(v)
            for k, v in asdict(self).items()
            if k not in ("step", "epoch", "tokens", "seconds", "extra") and v is not None
        }
        return pb.StepMetrics(
            step=self.step, total_steps=total_steps, epoch=float(self.epoch), method_metrics=self.extra, **optional
        )

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def results_csv(rows: list[StepRow], extra: Sequence[str] = ()) -> str:
    """OpenAI's five columns, then the method's own figures named in ``extra`` (from each row's ``extra``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*RESULTS_HEADER, *extra])
    for r in rows:
        writer.writerow(
            [
                r.step,
                _cell(r.train_loss),
                _cell(r.train_mean_token_accuracy),
                _cell(r.valid_loss),
                _cell(r.valid_mean_token_accuracy),
                *(_cell(r.extra.get(name)) for name in extra),
            ]
        )
    return out.getvalue()


class StopSignal:
    """Set by SIGTERM or by a cancel reply; polled at every step boundary."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.in_training = False

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def check(self) -> None:
        if self.reason is not None:
            raise RunStopped(self.reason)


# ---- the run -----------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    total_steps: int
    tokens_per_epoch: int
    trained_tokens: int
    train_examples: int
    model_prefix: str
    results_key: str
    rows: list[StepRow] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    train_seconds: float = 0.0


class TrainingRun:
    """State shared by the driver (:func:`run`) and the callback inside the TRL training loop."""

    results_extra: tuple[str, ...] = ()  # the method's figures written to results.csv after OpenAI's five columns

    def __init__(self, spec: JobSpec, reporter: Reporter, stop: StopSignal, store: ObjectStore | None = None):
        self.spec = spec
        self.reporter = reporter
        self.stop = stop
        self.store = store or open_store(spec.object_store)
        self.data_sha256: dict[str, dict[str, Any]] = {}
        self.mix_data: DataFileRead | None = None
        self.data_options: DataOptionsReport | None = None
        self.rows: list[StepRow] = []
        self.checkpoints: list[str] = []
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.tokens_per_epoch = 0
        self.trained_tokens_per_epoch = 0  # tokens that carry loss
        self.has_eval = False
        self.eval_steps: set[int] = set()  # optimizer steps after which the validation set is evaluated
        self.checkpoint_steps: set[int] = set()
        self.epochs_done = 0
        self.trainer: Any = None
        self.tokenizer: Any = None
        self.device: DeviceChoice | None = None
        # The checkpoint with the lowest validation loss so far: {"step", "valid_loss", "prefix"}; its manifest says
        # ``best: true`` (rewritten to false when a later checkpoint beats it).
        self.best: dict[str, Any] | None = None
        self.best_manifest: dict[str, Any] | None = None

    def method_metrics(self, logs: dict[str, Any]) -> dict[str, float]:
        """Figures of the training method beyond loss and accuracy (none for SFT; see trainer/preference.py)."""
        return {}

    # -- events
    def warn(self, message: str, data: dict[str, Any] | None = None) -> None:
        log.warning("%s", message)
        self.reporter.event("warn", message, data)

    # -- the steps of a run
    def record_file(self, name: str, data_file: DataFile, sha256: str, examples: int) -> None:
        """What a data file was when it was read, for the manifest (``training_file``, ``validation_file``, ...)."""
        self.data_sha256[name] = {
            "file_id": data_file.file_id,
            "key": data_file.key,
            "sha256": sha256,
            "examples": examples,
        }

    def read_data(self) -> tuple[DataFileRead, DataFileRead | None]:
        spec = self.spec
        train = read_chat_file(self.store, spec.training_file, "training_file")
        self.record_file("training_file", spec.training_file, train.sha256, len(train.records))
        valid = None
        if spec.validation_file is not None:
            valid = read_chat_file(self.store, spec.validation_file, "validation_file")
            self.record_file("validation_file", spec.validation_file, valid.sha256, len(valid.records))
        mix = spec.data.mix if spec.data is not None else None
        if mix is not None:
            self.mix_data = read_chat_file(self.store, mix.file, MIX_PARAM)
            self.record_file("mix_file", mix.file, self.mix_data.sha256, len(self.mix_data.records))
        log.info(
            "data: training %d examples (sha256 %s)%s",
            len(train.records),
            train.sha256,
            f", validation {len(valid.records)} examples (sha256 {valid.sha256})" if valid else "",
        )
        return train, valid

    def tokenize(
        self, chat: ChatTokenizer, records: list[ChatRecord], param: str, truncate: bool = True
    ) -> TokenizedSet:
        """Token ids and masks; cut at max_seq_length unless ``truncate`` is off (long examples are dropped)."""
        max_len = self.spec.hyperparameters.max_seq_length
        code = file_error_code(param).value
        try:
            tokenized = chat.tokenize_all(records, max_len if truncate else None)
        except ChatTemplateError as e:
            raise TrainerError(f"{param}: {e}", code=code, param=param) from e
        if tokenized.n_truncated:
            self.warn(
                f"{tokenized.n_truncated} of {tokenized.n_records} examples in the {param.replace('_', ' ')} are "
                f"longer than max_seq_length={max_len} tokens and were truncated",
                {
                    "file": param,
                    "truncated": tokenized.n_truncated,
                    "examples": tokenized.n_records,
                    "max_seq_length": max_len,
                    "lines": tokenized.truncated_lines[:20],
                },
            )
        if tokenized.n_dropped:
            self.warn(
                f"{tokenized.n_dropped} examples in the {param.replace('_', ' ')} have no assistant token within "
                f"max_seq_length={max_len} and were skipped",
                {"file": param, "skipped": tokenized.n_dropped, "lines": tokenized.dropped_lines[:20]},
            )
        if not tokenized.examples:
            raise TrainerError(
                f"{param}: no example has an assistant token to train on within max_seq_length={max_len}",
                code=code,
                param=param,
            )
        return tokenized

    def apply_data_options(self, chat: ChatTokenizer, train: TokenizedSet) -> TokenizedSet:
        """The job's ``tunery.data`` options on the tokenized training set, reported in one info event."""
        options = self.spec.data
        if options is None:
            return train
        pool = None
        if options.mix is not None and self.mix_data is not None:
            pool = self.tokenize(chat, self.mix_data.records, MIX_PARAM, options.long_examples == "truncate").examples
        examples, report = apply_options(
            train.examples,
            drop_duplicate_examples=options.drop_duplicates,
            long_examples=options.long_examples,
            max_seq_length=self.spec.hyperparameters.max_seq_length,
            mix_pool=pool,
            mix_file=options.mix.file.file_id if options.mix else None,
            fraction=options.mix.fraction if options.mix else None,
            seed=self.spec.seed,
        )
        if not examples:
            raise TrainerError(
                "training_file: no example is left after the data options (tunery.data)",
                code="invalid_training_file",
                param="training_file",
            )
        self.data_options = report
        message = report.message()
        log.info("%s", message)
        self.reporter.event("info", message, report.data())
        train.examples = examples
        return train

    def manifest(self, step: int, epoch: float, metrics: dict[str, Any], best: bool = False) -> dict[str, Any]:
        spec = self.spec
        model = self.trainer.model if self.trainer is not None else None
        peft_cfg = model.peft_config["default"] if model is not None and hasattr(model, "peft_config") else None
        if peft_cfg is not None:  # a parent adapter brings its own rank, alpha and targets
            lora = {"r": peft_cfg.r, "alpha": peft_cfg.lora_alpha, "dropout": peft_cfg.lora_dropout}
        else:
            lora = spec.lora.model_dump()
        target = peft_cfg.target_modules if peft_cfg is not None else spec.lora.target_modules
        tok = self.tokenizer
        return {
            "format": MANIFEST_FORMAT,
            "job_id": spec.job_id,
            "fine_tuned_model": spec.fine_tuned_model,
            "base_model": spec.base_model,
            "method": spec.method,
            "step": step,
            "epoch": epoch,
            "seed": spec.seed,
            "data_files": self.data_sha256,
            "data_options": self.data_options.data() if self.data_options else None,
            "hyperparameters": spec.hyperparameters.model_dump(),
            "adapter": spec.adapter,
            "precision": self.device.precision if self.device else spec.precision,
            "init_adapter_prefix": spec.init_adapter_prefix,
            "lora": None
            if spec.adapter == "full"
            else {
                **spec.lora.model_dump(),
                **lora,
                "resolved_target_modules": sorted(target) if isinstance(target, set | list) else target,
                "task_type": "CAUSAL_LM",
            },
            "best": best,
            "best_checkpoint": self.best,
            "tokenizer": {
                "eos_token": tok.eos_token,
                "pad_token": tok.pad_token,
                "chat_template_sha256": sha256_text(tok.chat_template or ""),
            },
            "training": {
                "device": self.device.device if self.device else None,
                "dtype": str(self.device.dtype).removeprefix("torch.") if self.device else None,
                "total_steps": self.total_steps,
                "tokens_per_epoch": self.tokens_per_epoch,
                "trained_tokens_per_epoch": self.trained_tokens_per_epoch,
                "checkpoint_steps": sorted(self.checkpoint_steps),
                "eval_steps": sorted(self.eval_steps),
            },
            "versions": library_versions(),
            "created_at": utc_now(),
            "metrics": metrics,
        }

    def save_adapter(self, prefix: str, step: int, epoch: float, row: StepRow | None, best: bool = False) -> None:
        manifest = self.manifest(step, epoch, row.summary() if row else {}, best=best)
        written = upload_checkpoint(
            self.store,
            prefix,
            self.trainer.model,
            self.tokenizer,
            manifest,
            base_model=self.spec.base_model,
            full=self.spec.adapter == "full",
        )
        if best:
            self.best_manifest = written

    def train_to_end(self, resume_dir: str | None) -> tuple[float, str, str]:
        """Train (from ``resume_dir`` when resuming), check that every step ran, save the final model (its manifest
        never ``best``: best_checkpoint names the best checkpoint) and the results file, and drop the resume
        states. Returns the training seconds, the final model's prefix and the results file's key."""
        spec, stop = self.spec, self.stop
        hp = spec.hyperparameters
        started = time.monotonic()
        stop.in_training = True
        try:
            self.trainer.train(resume_from_checkpoint=resume_dir)
        finally:
            stop.in_training = False
        train_seconds = time.monotonic() - started
        stop.check()
        if self.epochs_done != hp.n_epochs or len(self.rows) != self.total_steps:
            raise TrainerError(
                f"training ended after {len(self.rows)} of {self.total_steps} steps "
                f"({self.epochs_done} of {hp.n_epochs} epochs)"
            )
        last = self.rows[-1]
        final_prefix = model_prefix(spec.output_prefix)
        self.save_adapter(final_prefix, last.step, float(hp.n_epochs), last)
        results_key = f"{spec.output_prefix.rstrip('/')}/results.csv"
        self.store.put_bytes(results_key, results_csv(self.rows, self.results_extra).encode())
        drop_states(self)
        return train_seconds, final_prefix, results_key

    def is_new_best(self, row: StepRow | None) -> bool:
        """Whether ``row`` has the lowest validation loss so far (NaN never is)."""
        if row is None or row.valid_loss is None or math.isnan(row.valid_loss):
            return False
        return self.best is None or row.valid_loss < self.best["valid_loss"]

    def unmark_best(self) -> None:
        """The previous best checkpoint is no longer the best: rewrite its manifest with ``best: false``."""
        if self.best is None or self.best_manifest is None:
            return
        manifest = {**self.best_manifest, "best": False}
        key = f"{self.best['prefix']}/{MANIFEST}"
        self.store.put_bytes(key, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        self.best_manifest = None

    def plan(self, n_examples: int) -> None:
        """Steps, and the steps that evaluate and checkpoint (evenly spaced; one per epoch by default)."""
        hp = self.spec.hyperparameters
        self.steps_per_epoch = steps_per_epoch(n_examples, hp.batch_size)
        self.total_steps = self.steps_per_epoch * hp.n_epochs
        n_ckpt = hp.n_epochs if hp.n_checkpoints is None else hp.n_checkpoints
        n_evals = hp.n_epochs if hp.n_evals is None else hp.n_evals
        self.checkpoint_steps = set(spaced_steps(self.total_steps, max(1, n_ckpt)))
        self.eval_steps = set(spaced_steps(self.total_steps, n_evals)) if self.has_eval else set()

    def checkpoint(self, step: int, epoch: float) -> None:
        """A checkpoint at ``step`` (after its evaluation, if any), then its report."""
        if self.stop.reason is not None and self.stop.reason not in PREEMPT_REASONS:
            return
        row = self.rows[-1] if self.rows and self.rows[-1].step == step else None
        prefix = checkpoint_prefix(self.spec.output_prefix, step)
        if prefix in self.checkpoints:
            return  # already written at this step (a pause at a checkpoint step)
        t0 = time.monotonic()
        best = self.is_new_best(row)
        if best:
            assert row is not None and row.valid_loss is not None
            self.unmark_best()
            self.best = {"step": step, "valid_loss": row.valid_loss, "prefix": prefix}
        self.save_adapter(prefix, step, epoch, row, best=best)
        self.checkpoints.append(prefix)
        log.info("checkpoint: epoch %.2f step %d -> %s (%.1fs)", epoch, step, prefix, time.monotonic() - t0)
        metrics = (row or StepRow(step=step, epoch=epoch)).to_proto(self.reporter.pb, self.total_steps)
        self.reporter.checkpoint(step, prefix, metrics)


def make_callback(run: TrainingRun) -> TrainerCallback:
    from transformers import TrainerCallback

    class ReportingCallback(TrainerCallback):
        """Metrics every optimizer step, a checkpoint every epoch, and stop requests at step boundaries."""

        def __init__(self) -> None:
            self.step_started = time.monotonic()
            self.last_num_tokens: float | None = 0.0
            self.pending: StepRow | None = None  # an epoch's last step waits for its evaluation

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.max_steps != run.total_steps:
                run.warn(f"trainer plans {state.max_steps} steps, {run.total_steps} were reported at start")
                run.total_steps = state.max_steps

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.step_started = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if run.stop.reason is not None:
                control.should_training_stop = True
            elif state.global_step in run.eval_steps:
                control.should_evaluate = True  # right after this step's log (TRL's own eval strategy is off)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> Any:
            logs = logs or {}
            if "loss" in logs and "eval_loss" not in logs:
                self._train_log(state, logs)
            elif "eval_loss" in logs:
                row = self.pending or (run.rows[-1] if run.rows else None)
                if row is not None:
                    loss, acc = logs.get("eval_loss"), logs.get("eval_mean_token_accuracy")
                    # The evaluation covers the whole validation set: it is also the step's valid_loss.
                    row.full_valid_loss = row.valid_loss = loss
                    row.full_valid_mean_token_accuracy = row.valid_mean_token_accuracy = acc
                    log.info("eval: step %d valid_loss %s valid_acc %s", row.step, _fmt(loss), _fmt(acc))

        def _train_log(self, state: Any, logs: dict[str, Any]) -> None:
            elapsed = max(time.monotonic() - self.step_started, 1e-9)
            num_tokens = logs.get("num_tokens")
            tokens = None
            if num_tokens is not None and self.last_num_tokens is not None:
                tokens = int(num_tokens - self.last_num_tokens)
            self.last_num_tokens = num_tokens
            row = StepRow(
                step=state.global_step,
                epoch=float(state.epoch or 0.0),
                train_loss=logs.get("loss"),
                train_mean_token_accuracy=logs.get("mean_token_accuracy"),
                learning_rate=logs.get("learning_rate"),
                tokens=tokens,
                seconds=elapsed,
                tokens_per_second=(tokens / elapsed) if tokens is not None else None,
                extra=run.method_metrics(logs),
            )
            run.rows.append(row)
            print(
                f"step {row.step}/{run.total_steps} epoch {row.epoch:.2f} loss {_fmt(row.train_loss)} "
                f"acc {_fmt(row.train_mean_token_accuracy)} lr {_fmt(row.learning_rate)} "
                f"tok/s {_fmt(row.tokens_per_second)}",
                flush=True,
            )
            if row.step in run.eval_steps and run.stop.reason is None:
                self.pending = row  # reported with its valid_loss, after the evaluation
                return
            run.reporter.metrics(row.to_proto(run.reporter.pb, run.total_steps))
            if row.step in run.checkpoint_steps:
                run.checkpoint(row.step, row.epoch)

        def _flush(self) -> None:
            if self.pending is not None:
                run.reporter.metrics(self.pending.to_proto(run.reporter.pb, run.total_steps))
                self.pending = None

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            run.epochs_done += 1
            if run.stop.reason is not None:
                control.should_evaluate = False  # stop promptly: no evaluation, no checkpoint
                self._flush()

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            row = self.pending
            self._flush()
            # A new best validation loss between the planned checkpoints is checkpointed too, so the best
            # model is always one of the job's checkpoints.
            if row is not None and (row.step in run.checkpoint_steps or run.is_new_best(row)):
                run.checkpoint(row.step, row.epoch)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self._flush()

    return ReportingCallback()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def run(spec: JobSpec, reporter: Reporter, stop: StopSignal | None = None) -> RunResult:
    """Train one LoRA adapter as the spec says; raises TrainerError or RunStopped when it does not succeed."""
    stop = stop or StopSignal()
    if spec.method != "supervised":  # dpo, orpo, kto: TRL's preference trainers
        from .preference import run_preference

        return run_preference(spec, reporter, stop)
    hp = spec.hyperparameters
    if hp.n_epochs < 1 or hp.batch_size < 1 or hp.max_seq_length < 2 or not hp.learning_rate > 0:
        raise TrainerError("n_epochs, batch_size, max_seq_length and learning_rate must be positive")
    r = TrainingRun(spec, reporter, stop)
    train_data, valid_data = r.read_data()
    stop.check()

    r.device = resolve_device(spec.device, spec.precision, spec.adapter)
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

    eos_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra_eos = eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else []
    try:
        chat = ChatTokenizer(tokenizer, end_of_turn_tokens(tokenizer, extra_eos))
    except ChatTemplateError as e:
        raise TrainerError(str(e)) from e
    truncate = spec.data is None or spec.data.long_examples == "truncate"
    train = r.apply_data_options(chat, r.tokenize(chat, train_data.records, "training_file", truncate))
    valid = r.tokenize(chat, valid_data.records, "validation_file") if valid_data is not None else None
    if hp.train_on_inputs:
        for example in [*train.examples, *(valid.examples if valid is not None else [])]:
            example.assistant_masks = [1] * len(example.input_ids)
    r.has_eval = valid is not None
    r.plan(len(train.examples))
    r.tokens_per_epoch = train.n_tokens
    r.trained_tokens_per_epoch = train.n_trained_tokens
    log.info(
        "tokenized: %d training examples, %d tokens per epoch (%d trained), %d steps per epoch, %d steps",
        len(train.examples),
        train.n_tokens,
        train.n_trained_tokens,
        r.steps_per_epoch,
        r.total_steps,
    )

    with tempfile.TemporaryDirectory(prefix="tunery-trainer-") as workdir:
        args = sft_config(spec, workdir, r.device, r.has_eval)
        peft_config = None if spec.adapter == "full" else lora_config(spec)
        if spec.init_adapter_prefix:  # ``model`` was a fine-tuned model: continue its adapter
            model = load_parent_adapter(r.store, spec.init_adapter_prefix, model, workdir)
            peft_config = None
            log.info("continuing the adapter of %s", spec.init_adapter_prefix)
        callbacks = [make_callback(r), make_state_callback(r)]
        r.trainer = build_trainer(model, tokenizer, args, peft_config, train, valid, callbacks)
        resume_dir = prepare_resume(r, spec.resume_from, Path(workdir))
        stop.check()
        reporter.started(r.total_steps, len(train.examples), r.tokens_per_epoch, hp.model_dump())
        stop.check()
        log.info("training: %d steps", r.total_steps)
        train_seconds, final_prefix, results_key = r.train_to_end(resume_dir)

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
        trained_tokens=r.tokens_per_epoch * hp.n_epochs,
        train_examples=len(train.examples),
        model_prefix=final_prefix,
        results_key=results_key,
        rows=r.rows,
        checkpoints=r.checkpoints,
        train_seconds=train_seconds,
    )


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
            "training_file": spec.training_file.file_id,
            "validation_file": spec.validation_file.file_id if spec.validation_file else None,
            "data": spec.data.model_dump() if spec.data else None,
            "hyperparameters": spec.hyperparameters.model_dump(),
            "lora": spec.lora.model_dump(),
            "seed": spec.seed,
            "device": spec.device,
        },
        sort_keys=True,
    )
