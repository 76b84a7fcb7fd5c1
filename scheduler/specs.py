"""The JobSpec of a run, built from a job row and its input files: pure functions, no database and no store.

The caller (scheduler.dispatch) looks the job's files and the parent model up; ``build_spec`` only reads them, with
what the trainer needs of the control plane (its base model folder, the object store, the reporting address).
Beside it, what the trainer runs for a job (``trainer_method``) and a job's ``method`` with its hyperparameters
resolved (``resolved_method``), which file validation stores on the job.
"""

from __future__ import annotations

from typing import Any

from tunery import hyperparams
from tunery.db import File, Job
from tunery.jobspec import (
    DataFile,
    DataOptions,
    JobSpec,
    LoraSpec,
    MixSpec,
    PreferenceSpec,
    ResolvedHyperparameters,
    TrainingMethod,
)


def build_spec(
    job: Job,
    files: dict[str, File],
    parent_prefix: str | None,
    *,
    base_model_path: str,
    token: str,
    store_url: str,
    reporting_address: str,
    device: str,
) -> JobSpec | None:
    """The spec of the job's next run, or None when one of its inputs is gone: ``files`` are the job's input files
    by id (those missing were deleted), ``parent_prefix`` the object-store prefix of the fine-tuned model the job
    starts from (None when there is none, or when it was deleted)."""
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
    hp = job.hyperparameters
    training = job.tunery_options("training")
    if training.get("max_seq_length") in (None, "auto"):  # queued before the options existed: defaults
        # (the trainer caps the checkpoint and evaluation counts at its own number of steps)
        training = hyperparams.resolve_training(training, hp, 10**9, has_validation=valid is not None)
    lora = training["lora"]
    trainer, preference = trainer_method(job)
    init_prefix = None
    if job.model != job.base_model:  # fine-tuning a fine-tuned model: continue from its adapter
        if parent_prefix is None:
            return None
        init_prefix = parent_prefix
    assert job.fine_tuned_model
    return JobSpec(
        job_id=job.id,
        run_token=token,
        organization_id=job.organization_id,
        project_id=job.project_id,
        base_model=job.base_model,
        base_model_path=base_model_path,
        fine_tuned_model=job.fine_tuned_model,
        training_file=DataFile(file_id=train.id, key=train.object_key, sha256=train.sha256),
        validation_file=DataFile(file_id=valid.id, key=valid.object_key, sha256=valid.sha256) if valid else None,
        data=data,
        hyperparameters=ResolvedHyperparameters(
            n_epochs=hp["n_epochs"],
            batch_size=hp["batch_size"],
            learning_rate_multiplier=hp["learning_rate_multiplier"],
            learning_rate=hyperparams.base_learning_rate(training.get("adapter", "lora"), trainer)
            * hp["learning_rate_multiplier"],
            max_seq_length=training["max_seq_length"],
            warmup_ratio=training["warmup_ratio"] or 0.0,
            warmup_steps=training["warmup_steps"],
            lr_scheduler=training["lr_scheduler_type"],
            weight_decay=training["weight_decay"],
            max_grad_norm=training["max_grad_norm"],
            gradient_accumulation_steps=training["gradient_accumulation_steps"],
            train_on_inputs=training["train_on_inputs"],
            n_checkpoints=training["n_checkpoints"],
            n_evals=training["n_evals"],
            packing=training["packing"],
        ),
        lora=LoraSpec(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=lora["target_modules"]),
        method=trainer,
        preference=preference,
        seed=job.seed,
        device=device,
        adapter=training.get("adapter", "lora"),
        precision=training.get("precision", "auto"),
        init_adapter_prefix=init_prefix,
        object_store=store_url,
        output_prefix=f"jobs/{job.id}",
        reporting_address=reporting_address,
        # A job run before (paused, crashed, preempted, its scheduler gone) continues from its newest complete
        # checkpoint, if it has one.
        resume_from="latest" if job.attempts else None,
    )


def resolved_method(method: dict[str, Any] | None, hp: dict[str, Any]) -> dict[str, Any]:
    """The job's ``method`` with its hyperparameters resolved: its type kept, ``beta`` of a dpo job resolved."""
    method_type = (method or {}).get("type", "supervised")
    if method_type != "dpo":
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}
    requested = ((method or {}).get("dpo") or {}).get("hyperparameters") or {}
    return {"type": "dpo", "dpo": {"hyperparameters": {**hp, "beta": hyperparams.resolve_beta(requested.get("beta"))}}}


def trainer_method(job: Job) -> tuple[TrainingMethod, PreferenceSpec | None]:
    """What the trainer runs for a job: ``supervised``, or a dpo job's preference trainer (``tunery.method``)."""
    method = job.method or {}
    if method.get("type") != "dpo":
        return "supervised", None
    options = ((job.extensions or {}).get("tunery") or {}).get("method") or {}
    trainer: TrainingMethod = options.get("trainer") or "dpo"
    requested = (method.get("dpo") or {}).get("hyperparameters") or {}
    return trainer, PreferenceSpec(beta=hyperparams.resolve_beta(requested.get("beta")))
