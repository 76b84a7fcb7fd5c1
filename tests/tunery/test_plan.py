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
from tunery.jobspec import JobSpec
from tunery.methods import METHODS
from tunery.plan import LoraPlan, PlanRequest, TrainingPlan, check_request, resolve_plan


# ---- resolution ----------------------------------------------------------------------------------------------
def _resolve(n: int, has_validation: bool = True, cpu_only: bool = True, **request: Any) -> TrainingPlan:
    return resolve_plan(PlanRequest(**request), n, has_validation=has_validation, cpu_only=cpu_only)


def test_resolve_training_defaults_and_auto_rules() -> None:
    plan = _resolve(40, hyperparameters={"n_epochs": 3, "batch_size": 4})
    assert plan.training_options() == {
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "warmup_steps": None,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "neftune_noise_alpha": None,
        "max_seq_length": 1024,
        "gradient_accumulation_steps": 1,
        "batch_tokens": None,
        "train_on_inputs": False,
        "n_checkpoints": 3,  # one per epoch
        "n_evals": 3,  # one per epoch, with a validation file
        "packing": True,
        "adapter": "lora",
        "precision": "auto",
        "gradient_checkpointing": "auto",  # decided by the hardware check, from the memory estimate
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    }
    assert (plan.method, plan.learning_rate, plan.beta) == ("supervised", 1e-3, None)
    assert _resolve(40, has_validation=False, hyperparameters={"n_epochs": 3, "batch_size": 4}).n_evals == 0
    # 10 examples, batch 4, 1 epoch: 3 steps; counts are capped at the steps, alpha follows r.
    small = _resolve(
        10,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        training={
            "n_checkpoints": 10,
            "n_evals": 9,
            "warmup_steps": 2,
            "lora": {"r": 4},
            "gradient_accumulation_steps": 3,
        },
    )
    assert (small.n_checkpoints, small.n_evals) == (3, 3)
    assert (small.warmup_steps, small.training_options()["warmup_ratio"]) == (2, None)
    assert small.lora.alpha == 8
    assert small.gradient_accumulation_steps == 2  # the largest divisor of the batch size at most 3


def test_auto_batch_size_is_a_multiple_of_gradient_accumulation() -> None:
    accum = {"gradient_accumulation_steps": 4}
    assert _resolve(3000, cpu_only=False, training=accum).batch_size == 4  # round(3000 * 0.002) = 6, lowered to 4
    assert _resolve(50, cpu_only=True, training=accum).batch_size == 4  # at least one per micro-batch


def test_batch_tokens_resolves_an_auto_batch_size_from_the_mean_example() -> None:
    """``tunery.training.batch_tokens``: as many examples as the file's mean example fills the budget with (a step is
    still that many examples), a multiple of the micro-batches, at most 256 and the file; OpenAI's rule where the
    mean is not known; refused beside an explicit batch_size."""
    budget = {"batch_tokens": 4096}
    assert _resolve(5000, training=budget).batch_size == 8  # OpenAI's rule (and the CPU's 8): no mean known
    plan = resolve_plan(PlanRequest(training=budget), 5000, has_validation=False, cpu_only=True, tokens_per_example=200)
    assert (plan.batch_size, plan.batch_tokens, plan.training_options()["batch_tokens"]) == (20, 4096, 4096)
    assert plan.openai_hyperparameters()["batch_size"] == 20  # what the job shows: a number of examples
    accum = PlanRequest(training={**budget, "gradient_accumulation_steps": 8})
    assert resolve_plan(accum, 5000, has_validation=False, cpu_only=True, tokens_per_example=200).batch_size == 16
    assert (
        resolve_plan(
            PlanRequest(training=budget), 12, has_validation=False, cpu_only=True, tokens_per_example=20
        ).batch_size
        == 12
    )
    huge = PlanRequest(training={"batch_tokens": 1_048_576})
    assert resolve_plan(huge, 10**6, has_validation=False, cpu_only=False, tokens_per_example=50).batch_size == 256
    both = PlanRequest(training=budget, hyperparameters={"batch_size": 4})
    problem = check_request(both, has_validation=False)
    assert problem is not None and problem.param == "tunery.training.batch_tokens"
    assert check_request(PlanRequest(training=budget), has_validation=False) is None


def test_the_method_sets_the_learning_rate_beta_and_what_applies() -> None:
    """Each method's base rate per adapter, beta only where it applies, packing and train_on_inputs off for the
    preference methods (tunery.methods.METHODS)."""
    dpo = _resolve(40, method="dpo", hyperparameters={"beta": 0.3, "learning_rate_multiplier": 2.0})
    assert (dpo.beta, dpo.learning_rate, dpo.packing) == (0.3, 2e-4, False)
    assert _resolve(40, method="kto").beta == 0.1  # auto
    full = _resolve(40, method="orpo", training={"adapter": "full"})
    assert full.learning_rate == METHODS["orpo"].full_base_lr < METHODS["supervised"].full_base_lr
    assert _resolve(40, training={"adapter": "full"}).learning_rate == METHODS["supervised"].full_base_lr


def test_a_stored_request_reads_back_and_resolves_to_the_same_plan() -> None:
    """The job stores the request in OpenAI's fields; read back, a resolved plan's values resolve to themselves."""
    request = PlanRequest(
        method="kto", hyperparameters={"beta": 0.2, "n_epochs": 2}, training={"lora": {"r": 4}, "n_evals": 1}
    )
    back = PlanRequest.from_job_fields(
        request.openai_method(), request.openai_hyperparameters(), request.training.model_dump(), "kto"
    )
    assert back == request
    plan = resolve_plan(request, 30, has_validation=True, cpu_only=True)
    again = PlanRequest.from_job_fields(
        plan.openai_method(), plan.openai_hyperparameters(), plan.training_options(), "kto"
    )
    assert resolve_plan(again, 30, has_validation=True, cpu_only=True) == plan


def test_spaced_steps() -> None:
    assert hyperparams.spaced_steps(12, 3) == [4, 8, 12]  # one per epoch of 4 steps
    assert hyperparams.spaced_steps(10, 3) == [4, 7, 10]
    assert hyperparams.spaced_steps(3, 5) == [1, 2, 3]
    assert hyperparams.spaced_steps(5, 0) == []


# ---- the TRL config ------------------------------------------------------------------------------------------
def _plan(**values: Any) -> TrainingPlan:
    lora = LoraPlan(r=4, alpha=12, dropout=0.1, target_modules=["q_proj", "v_proj"])
    return TrainingPlan(**{"n_epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "lora": lora, **values})


def _config(method: str, plan: TrainingPlan) -> Any:
    from trainer.config import trl_config
    from trainer.loading import resolve_device
    from trainer.methods import get_method

    out = tempfile.mkdtemp(prefix="tunery-cfg-")
    return trl_config(get_method(method), plan, seed=11, output_dir=out, choice=resolve_device("cpu"))


def test_every_option_reaches_the_trl_config() -> None:
    from trainer.loading import lora_config

    plan = _plan(
        lr_scheduler_type="cosine",
        warmup_steps=3,
        weight_decay=0.05,
        max_grad_norm=0.5,
        max_seq_length=300,
        gradient_accumulation_steps=4,
        packing=True,
    )
    args = _config("supervised", plan)
    assert args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 4  # 8 examples a step
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 3
    assert (args.weight_decay, args.max_grad_norm, args.learning_rate) == (0.05, 0.5, 1e-3)
    assert args.padding_free and not args.packing and args.max_length is None  # we truncate at 300 ourselves
    assert (args.seed, args.num_train_epochs) == (11, 2)
    lora = lora_config(plan)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (4, 12, 0.1, {"q_proj", "v_proj"})

    ratio = _config("supervised", _plan(warmup_ratio=0.25, packing=False))
    assert ratio.warmup_steps == 0.25 and not ratio.padding_free and ratio.max_length == 1024
    assert not _config("supervised", _plan(batch_size=1)).padding_free  # a lone example has no padding to remove

    with pytest.raises(ValueError, match="must divide"):
        _plan(gradient_accumulation_steps=3)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_the_preference_configs_share_every_option(method: str) -> None:
    """One builder: the same plan gives each preference method the same common fields, and its own on top."""
    plan = _plan(
        method=method,
        beta=0.25,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        gradient_accumulation_steps=2,
        neftune_noise_alpha=5.0,
    )
    args = _config(method, plan)
    assert args.neftune_noise_alpha == 5.0
    assert (args.beta, args.lr_scheduler_type, args.warmup_steps, args.max_length) == (0.25, "cosine", 2, 1024)
    assert args.gradient_accumulation_steps == 2 and args.learning_rate == 1e-3 and args.seed == 11
    rows = 2 if method == "kto" else 1  # a KTO pair is two rows, side by side
    assert args.per_device_train_batch_size == 4 * rows
    assert type(args).__name__ == {"dpo": "DPOConfig", "orpo": "ORPOConfig", "kto": "KTOConfig"}[method]


# ---- through the API -----------------------------------------------------------------------------------------
def test_training_options_validated_with_param(server: Any, upload: Any) -> None:
    train = upload(chat_lines(12)).id
    cases = [
        ({"lr_scheduler_type": "exponential"}, "tunery.training.lr_scheduler_type"),
        ({"warmup_ratio": 1.0}, "tunery.training.warmup_ratio"),
        ({"warmup_ratio": 0.1, "warmup_steps": 3}, "tunery.training"),
        ({"weight_decay": -0.1}, "tunery.training.weight_decay"),
        ({"max_grad_norm": "big"}, "tunery.training.max_grad_norm"),
        ({"neftune_noise_alpha": 0}, "tunery.training.neftune_noise_alpha"),
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
        "neftune_noise_alpha": 5.0,
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
        "gradient_checkpointing": False,  # auto, resolved: the tiny model fits without it
        "batch_tokens": None,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    }
    assert raw["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}

    # What the trainer got: the spec the scheduler wrote.
    objects = Path(server.settings.data_dir) / "objects"
    spec = JobSpec.model_validate_json((objects / f"jobs/{job.id}/spec.json").read_bytes())
    hp = spec.plan
    assert (hp.lr_scheduler_type, hp.warmup_steps, hp.weight_decay, hp.max_grad_norm) == ("cosine", 1, 0.01, 0.5)
    assert hp.neftune_noise_alpha == 5.0
    assert (hp.max_seq_length, hp.gradient_accumulation_steps, hp.train_on_inputs) == (128, 2, True)
    assert (hp.n_checkpoints, hp.n_evals, hp.packing) == (3, 2, True)
    assert (hp.lora.r, hp.lora.alpha, hp.lora.target_modules) == (4, 8, ["q_proj", "v_proj"])

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
