"""The JobSpec: everything a trainer run needs, written by the scheduler to the object store.

The trainer gets only a reference to it (``python -m trainer --spec <object-store-url>#<key>`` or a local
path), so the same trainer runs as a local process, a Kubernetes pod or a pod on another cluster.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LoraSpec(BaseModel):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


class ResolvedHyperparameters(BaseModel):
    """Numbers the trainer uses; ``auto`` is already resolved by the control plane (see docs/hyperparameters.md)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    max_seq_length: int = 1024
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # when set, wins over warmup_ratio
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step; divides batch_size
    train_on_inputs: bool = False  # loss on every token, not only the assistant's
    n_checkpoints: int | None = None  # evenly spaced over the run; None: one per epoch
    n_evals: int | None = None  # evaluations of the validation file, evenly spaced; None: one per epoch
    packing: bool = True  # padding-free: each micro-batch is one sequence with per-example position ids


# The TRL preference trainers a ``dpo`` job can run (``tunery.method.trainer``; docs/methods.md).
PreferenceTrainer = Literal["dpo", "orpo", "kto"]
# What the trainer runs: SFT, or one of the preference trainers.
TrainingMethod = Literal["supervised", "dpo", "orpo", "kto"]


class PreferenceSpec(BaseModel):
    """Hyperparameters of the preference methods beyond the common ones."""

    beta: float = Field(default=0.1, gt=0, le=2)  # DPO's and KTO's beta; ORPO's lambda (weight of the odds-ratio)


class DataFile(BaseModel):
    file_id: str
    key: str  # object-store key
    sha256: str | None = None


class MixSpec(BaseModel):
    """A general-purpose dataset mixed into the training set (against catastrophic forgetting)."""

    file: DataFile
    fraction: float = Field(gt=0, le=0.5)  # of the final training set


def mix_count(n_train: int, fraction: float) -> int:
    """How many examples to mix into ``n_train`` so that they make up ``fraction`` of the final set."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    return round(n_train * fraction / (1 - fraction))


class DataOptions(BaseModel):
    """Data quality options of the job (``tunery.data`` on the job; see docs/data-options.md)."""

    drop_duplicates: bool = False
    long_examples: Literal["truncate", "drop"] = "truncate"
    mix: MixSpec | None = None


class JobSpec(BaseModel):
    job_id: str
    run_token: str
    organization_id: str
    project_id: str
    method: TrainingMethod = "supervised"
    preference: PreferenceSpec | None = None  # set for dpo, orpo and kto

    base_model: str  # the name users see (e.g. smollm2-135m-instruct)
    base_model_path: str  # local folder with a safetensors model and tokenizer
    fine_tuned_model: str  # ft:... name this run produces

    training_file: DataFile
    validation_file: DataFile | None = None
    data: DataOptions | None = None
    hyperparameters: ResolvedHyperparameters
    lora: LoraSpec = Field(default_factory=LoraSpec)
    seed: int
    device: str = "auto"  # auto | cpu | cuda
    # Adapters and precision (``tunery.training.adapter`` / ``precision``; docs/adapters.md).
    adapter: Literal["lora", "qlora", "full"] = "lora"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Fine-tuning a fine-tuned model: the object-store prefix of the parent adapter (``model`` was an ft: model).
    init_adapter_prefix: str | None = None

    object_store: str  # URL of the object store (file:///... or s3://bucket/prefix, with TUNERY_S3_* in the env)
    output_prefix: str  # jobs/<job_id>; checkpoints, final model and results go under it
    reporting_address: str  # host:port of the gRPC TrainerReporting service
    # Continue from a resume state (see tunery/resume.py): "latest" (the newest complete one, if any) or a state's
    # prefix; None starts from the beginning.
    resume_from: str | None = None

    def spec_key(self) -> str:
        return f"{self.output_prefix}/spec.json"
