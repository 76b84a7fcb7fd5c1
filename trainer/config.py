"""TRL's config of a run, built from the training plan by one function for every method.

The conventions every method shares are here (:func:`trl_args`): one optimizer step per ``batch_size`` examples in
``gradient_accumulation_steps`` micro-batches, logging every step, evaluations and checkpoints driven by Tunery's
callback at the steps of :func:`tunery.hyperparams.spaced_steps` (TRL's own strategies are off), no hub, no
reporting integrations. What a method adds (SFT's padding-free packing, the preference methods' ``beta``) comes from
its registration (:meth:`trainer.methods.TrainerMethod.config_extra`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunery.plan import TrainingPlan

from .loading import DeviceChoice

if TYPE_CHECKING:
    from .methods import TrainerMethod


def trl_args(
    plan: TrainingPlan, *, seed: int, output_dir: str, choice: DeviceChoice, rows_per_example: int = 1
) -> dict:
    """The keyword arguments of every method's TRL config. ``rows_per_example``: rows of the method's dataset per
    training example (a KTO pair is two rows, side by side), so a micro-batch holds whole examples."""
    micro_batch = plan.micro_batch_size * rows_per_example
    return dict(
        output_dir=output_dir,
        num_train_epochs=plan.n_epochs,
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=plan.learning_rate,
        lr_scheduler_type=plan.lr_scheduler_type,
        # An int counts steps; a float in [0, 1) is a ratio of the total steps.
        warmup_steps=plan.warmup_steps if plan.warmup_steps is not None else plan.warmup_ratio,
        weight_decay=plan.weight_decay,
        max_grad_norm=plan.max_grad_norm,
        neftune_noise_alpha=plan.neftune_noise_alpha,
        seed=seed,
        data_seed=seed,
        max_length=plan.max_seq_length,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,  # report a NaN loss as NaN, do not paper over it
        eval_strategy="no",  # see trainer.metrics ReportingCallback.on_step_end
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
        **{CHECKPOINTING_FIELD: choice.gradient_checkpointing},
    )


def _checkpointing_field() -> str:
    """TrainingArguments' name for gradient checkpointing: ``activation_checkpointing`` since transformers 5.20
    (``gradient_checkpointing`` is its deprecated alias), ``gradient_checkpointing`` before (the transformers that
    vLLM 0.32 requires, in a trainer where vLLM samples: trainer/generation.py)."""
    from transformers import TrainingArguments

    fields = getattr(TrainingArguments, "__dataclass_fields__", {})
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


CHECKPOINTING_FIELD = _checkpointing_field()


def trl_config(
    method: TrainerMethod,
    plan: TrainingPlan,
    *,
    seed: int,
    output_dir: str,
    choice: DeviceChoice,
    model_path: str = "",
) -> Any:
    """The method's TRL config (SFTConfig, DPOConfig, ...) for ``plan``, training the model of ``model_path`` (which
    a reinforcement run's vLLM loads too; a run whose answers transformers samples needs none)."""
    args = trl_args(
        plan, seed=seed, output_dir=output_dir, choice=choice, rows_per_example=method.info.rows_per_example
    )
    return method.config_class()(**method.config_args(args, plan, choice, model_path))
