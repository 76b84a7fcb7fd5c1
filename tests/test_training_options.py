"""Tunery's training options (``tunery.training``): validation, ``auto`` resolution, storage, and that every value
reaches TRL's config and a real run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, chat_lines
from tests.schema import validate
from tunery import hyperparams
from tunery.jobspec import DataFile, JobSpec, LoraSpec, ResolvedHyperparameters


# ---- resolution ----------------------------------------------------------------------------------------------
def test_resolve_training_defaults_and_auto_rules() -> None:
    hp = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}
    out = hyperparams.resolve_training(None, hp, n_examples=40, has_validation=True)
    assert out == {
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "warmup_steps": None,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_seq_length": 1024,
        "gradient_accumulation_steps": 1,
        "train_on_inputs": False,
        "n_checkpoints": 3,  # one per epoch
        "n_evals": 3,  # one per epoch, with a validation file
        "packing": True,
        "adapter": "lora",
        "precision": "auto",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    }
    assert hyperparams.resolve_training(None, hp, 40, has_validation=False)["n_evals"] == 0
    # 10 examples, batch 4, 1 epoch: 3 steps; counts are capped at the steps, alpha follows r.
    small = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}
    req = {"n_checkpoints": 10, "n_evals": 9, "warmup_steps": 2, "lora": {"r": 4}, "gradient_accumulation_steps": 3}
    out = hyperparams.resolve_training(req, small, 10, has_validation=True)
    assert (out["n_checkpoints"], out["n_evals"]) == (3, 3)
    assert (out["warmup_steps"], out["warmup_ratio"]) == (2, None)
    assert out["lora"]["alpha"] == 8
    assert out["gradient_accumulation_steps"] == 2  # the largest divisor of the batch size at most 3


def test_auto_batch_size_is_a_multiple_of_gradient_accumulation() -> None:
    hp = hyperparams.resolve({}, 3000, cpu_only=False, grad_accum=4)
    assert hp["batch_size"] == 4  # round(3000 * 0.002) = 6, lowered to a multiple of 4
    assert hyperparams.resolve({}, 50, cpu_only=True, grad_accum=4)["batch_size"] == 4  # at least one per micro-batch


def test_spaced_steps() -> None:
    assert hyperparams.spaced_steps(12, 3) == [4, 8, 12]  # one per epoch of 4 steps
    assert hyperparams.spaced_steps(10, 3) == [4, 7, 10]
    assert hyperparams.spaced_steps(3, 5) == [1, 2, 3]
    assert hyperparams.spaced_steps(5, 0) == []


# ---- the TRL config ------------------------------------------------------------------------------------------
def _spec(**hp: Any) -> JobSpec:
    values: dict[str, Any] = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0, "learning_rate": 1e-3}
    values.update(hp)
    return JobSpec(
        job_id="ftjob-cfg",
        run_token="t",
        organization_id="o",
        project_id="p",
        base_model="tiny-llama",
        base_model_path="/nonexistent",
        fine_tuned_model="ft:tiny-llama:o::ftjob-cfg",
        training_file=DataFile(file_id="file-x", key="files/x"),
        hyperparameters=ResolvedHyperparameters(**values),
        lora=LoraSpec(r=4, alpha=12, dropout=0.1, target_modules=["q_proj", "v_proj"]),
        seed=11,
        device="cpu",
        object_store="/nonexistent",
        output_prefix="jobs/ftjob-cfg",
        reporting_address="",
    )


def test_every_option_reaches_the_trl_config() -> None:
    from trainer import run as R

    spec = _spec(
        lr_scheduler="cosine",
        warmup_steps=3,
        weight_decay=0.05,
        max_grad_norm=0.5,
        max_seq_length=300,
        gradient_accumulation_steps=4,
        packing=True,
    )
    args = R.sft_config(spec, tempfile.mkdtemp(prefix="tunery-cfg-"), R.resolve_device("cpu"), has_eval=True)
    assert args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 4  # 8 examples a step
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 3
    assert (args.weight_decay, args.max_grad_norm, args.learning_rate) == (0.05, 0.5, 1e-3)
    assert args.padding_free and not args.packing and args.max_length is None  # we truncate at 300 ourselves
    assert (args.seed, args.num_train_epochs) == (11, 2)
    lora = R.lora_config(spec)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (4, 12, 0.1, {"q_proj", "v_proj"})

    ratio = R.sft_config(_spec(warmup_ratio=0.25, packing=False), tempfile.mkdtemp(), R.resolve_device("cpu"), False)
    assert ratio.warmup_steps == 0.25 and not ratio.padding_free and ratio.max_length == 1024
    one = R.sft_config(_spec(batch_size=1), tempfile.mkdtemp(), R.resolve_device("cpu"), False)
    assert not one.padding_free  # a lone example has no padding to remove

    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="must divide"):
        R.sft_config(_spec(gradient_accumulation_steps=3), tempfile.mkdtemp(), R.resolve_device("cpu"), False)


# ---- through the API -----------------------------------------------------------------------------------------
def test_training_options_validated_with_param(server: Any, upload: Any) -> None:
    train = upload(chat_lines(12)).id
    cases = [
        ({"lr_scheduler_type": "exponential"}, "tunery.training.lr_scheduler_type"),
        ({"warmup_ratio": 1.0}, "tunery.training.warmup_ratio"),
        ({"warmup_ratio": 0.1, "warmup_steps": 3}, "tunery.training"),
        ({"weight_decay": -0.1}, "tunery.training.weight_decay"),
        ({"max_grad_norm": "big"}, "tunery.training.max_grad_norm"),
        ({"max_seq_length": 8}, "tunery.training.max_seq_length"),
        ({"gradient_accumulation_steps": 0}, "tunery.training.gradient_accumulation_steps"),
        ({"train_on_inputs": "maybe"}, "tunery.training.train_on_inputs"),
        ({"n_checkpoints": 0}, "tunery.training.n_checkpoints"),
        ({"n_evals": 2}, "tunery.training.n_evals"),  # no validation file
        ({"packing": "sometimes"}, "tunery.training.packing"),
        ({"lora": {"r": 0}}, "tunery.training.lora.r"),
        ({"lora": {"dropout": 1.0}}, "tunery.training.lora.dropout"),
        ({"lora": {"target_modules": ["q_proj", "bad name"]}}, "tunery.training.lora.target_modules"),
        ({"lora": {"target_modules": "all"}}, "tunery.training.lora.target_modules"),
        ({"lora": {"rank": 8}}, "tunery.training.lora.rank"),
        ({"epochs": 2}, "tunery.training.epochs"),
    ]
    for training, param in cases:
        body = {"model": TINY, "training_file": train, "tunery": {"training": training}}
        r = server.http.post("/v1/fine_tuning/jobs", json=body)
        assert r.status_code == 400, (training, r.text)
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param, (training, r.json())
    # Options that depend on each other: micro-batches must split the batch evenly.
    body = {
        "model": TINY,
        "training_file": train,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 6}}},
        "tunery": {"training": {"gradient_accumulation_steps": 4}},
    }
    r = server.http.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tunery.training.gradient_accumulation_steps"


@pytest.mark.integration
def test_training_options_resolved_stored_and_honoured_by_a_real_run(server: Any, upload: Any) -> None:
    train = upload(chat_lines(12)).id
    valid = upload(chat_lines(4), name="valid.jsonl").id
    training = {
        "lr_scheduler_type": "cosine",
        "warmup_steps": 1,
        "weight_decay": 0.01,
        "max_grad_norm": 0.5,
        "max_seq_length": 128,
        "gradient_accumulation_steps": 2,
        "train_on_inputs": True,
        "n_checkpoints": 3,
        "n_evals": 2,
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
    }
    job = server.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=train,
        validation_file=valid,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        extra_body={"tunery": {"training": training}},
    )
    requested = job.model_extra["tunery"]["training"]
    assert requested["n_checkpoints"] == 3 and requested["max_seq_length"] == 128
    assert requested["packing"] is True and requested["lora"]["alpha"] == "auto"  # defaults, auto until validated

    done = server.wait_job(job.id, {"succeeded", "failed"}, timeout=300)
    assert done.status == "succeeded", (done.error, server.events(job.id))
    raw = server.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    resolved = raw["tunery"]["training"]
    assert resolved == {
        **training,
        "warmup_ratio": None,
        "packing": True,
        "adapter": "lora",
        "precision": "fp32",  # auto, resolved for the CPU-only trainer
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    assert raw["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}

    # What the trainer got: the spec the scheduler wrote.
    objects = Path(server.settings.data_dir) / "objects"
    spec = JobSpec.model_validate_json((objects / f"jobs/{job.id}/spec.json").read_bytes())
    hp = spec.hyperparameters
    assert (hp.lr_scheduler, hp.warmup_steps, hp.weight_decay, hp.max_grad_norm) == ("cosine", 1, 0.01, 0.5)
    assert (hp.max_seq_length, hp.gradient_accumulation_steps, hp.train_on_inputs) == (128, 2, True)
    assert (hp.n_checkpoints, hp.n_evals, hp.packing) == (3, 2, True)
    assert (spec.lora.r, spec.lora.alpha, spec.lora.target_modules) == (4, 8, ["q_proj", "v_proj"])

    # 12 examples, batch 4, 2 epochs: 6 steps; 3 checkpoints and 2 evaluations, evenly spaced. The first evaluation
    # (step 3) is the best so far, so it is checkpointed too (docs/adapters.md: the best checkpoint always exists).
    steps = sorted(c.step_number for c in server.client.fine_tuning.jobs.checkpoints.list(job.id).data)
    assert steps == [2, 3, 4, 6]
    events = server.client.fine_tuning.jobs.list_events(job.id, limit=200).data
    metrics = [e.data for e in events if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics if m.get("valid_loss") is not None) == [3, 6]
    manifest = json.loads((objects / f"jobs/{job.id}/model/tunery_manifest.json").read_bytes())
    # train_on_inputs: every token carries loss (without it, only the assistant's do).
    assert manifest["training"]["trained_tokens_per_epoch"] == manifest["training"]["tokens_per_epoch"]
    assert manifest["hyperparameters"]["train_on_inputs"] is True
    assert manifest["lora"]["resolved_target_modules"] == ["q_proj", "v_proj"]
