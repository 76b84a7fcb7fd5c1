"""Golden tests of the JobSpec a run gets (scheduler.specs.build_spec): job rows built in memory, no database.

A job validated by this version stores its resolved plan (``jobs.plan``) and the spec embeds it whole; a job queued
by an older version has its resolved values in its OpenAI fields and ``tunery.training`` only, which resolve to
themselves.

Each test compares the whole ``model_dump`` of the spec with an expected dict written out here, so any change to
what a trainer run is told shows up as a change of these dicts.
"""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.specs import build_spec
from tunery.db import File, Job
from tunery.evalreport import EvalOptions
from tunery.jobspec import EmbeddingSpec, JudgeSpec
from tunery.plan import PlanRequest, TrainingPlan, resolve_plan
from tunery.settings import Generation

JOB_ID = "ftjob-abc123"
STORE = "file:///data/objects"
REPORTING = "127.0.0.1:50051"
BASE_PATH = "/models/tiny"

# The tunery.training options of a job as file validation stores them: every default resolved (20 examples, batch
# size 4, 3 epochs, no validation file: 15 steps).
RESOLVED_TRAINING: dict[str, Any] = {
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "warmup_steps": None,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "max_seq_length": 1024,
    "gradient_accumulation_steps": 1,
    "train_on_inputs": False,
    "n_checkpoints": 3,
    "n_evals": 0,
    "packing": True,
    "adapter": "lora",
    "precision": "auto",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
}
HP = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}


def a_file(file_id: str) -> File:
    return File(id=file_id, object_key=f"files/{file_id}", sha256=f"sha-{file_id}")


def a_job(**overrides: Any) -> Job:
    """A job as the scheduler finds it queued: validated, its hyperparameters and training options resolved."""
    fields: dict[str, Any] = {
        "id": JOB_ID,
        "organization_id": "org-1",
        "project_id": "proj-1",
        "status": "queued",
        "model": "tiny",
        "base_model": "tiny",
        "training_file": "file-train",
        "validation_file": None,
        "suffix": None,
        "seed": 42,
        "method": {"type": "supervised", "supervised": {"hyperparameters": HP}},
        "hyperparameters": HP,
        "extensions": {"tunery": {"training": RESOLVED_TRAINING}},
        "fine_tuned_model": "ft:tiny:org:none:abc123",
        "attempts": 0,
        **overrides,
    }
    return Job(**fields)


def spec_of(
    job: Job,
    files: list[str],
    parent_prefix: str | None = None,
    judges: dict[str, JudgeSpec] | None = None,
    embedding_model: EmbeddingSpec | None = None,
    generation: Generation = "auto",
) -> dict[str, Any] | None:
    spec = build_spec(
        job,
        {file_id: a_file(file_id) for file_id in files},
        parent_prefix,
        base_model_path=BASE_PATH,
        store_url=STORE,
        reporting_address=REPORTING,
        device="cpu",
        generation=generation,
        judges=judges,
        embedding_model=embedding_model,
    )
    return None if spec is None else spec.model_dump()


PLAN: dict[str, Any] = {
    "method": "supervised",
    "n_epochs": 3,
    "batch_size": 4,
    "learning_rate_multiplier": 1.0,
    "learning_rate": 0.001,
    "beta": None,
    "adapter": "lora",
    "precision": "auto",
    "max_seq_length": 1024,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "warmup_steps": None,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "neftune_noise_alpha": None,
    "gradient_accumulation_steps": 1,
    "batch_tokens": None,
    "train_on_inputs": False,
    "n_checkpoints": 3,
    "n_evals": 0,
    "packing": True,
    "gradient_checkpointing": None,  # a plan resolved without the hardware check (a job queued before plans)
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "reinforcement": None,
}
SUPERVISED: dict[str, Any] = {
    "task": "fine_tune",
    "job_id": JOB_ID,
    "organization_id": "org-1",
    "project_id": "proj-1",
    "base_model": "tiny",
    "base_model_path": BASE_PATH,
    "fine_tuned_model": "ft:tiny:org:none:abc123",
    "training_file": {"file_id": "file-train", "key": "files/file-train", "sha256": "sha-file-train"},
    "validation_file": None,
    "data": None,
    # Every job writes eval reports, with the default options unless it set tunery.eval.
    "eval": EvalOptions().model_dump(),
    "eval_reference_file": None,
    "plan": PLAN,
    "seed": 42,
    "device": "cpu",
    "generation": "auto",
    "init_adapter_prefix": None,
    "export": None,
    "judges": {},
    "embedding_model": None,
    "integrations": None,
    "object_store": STORE,
    "output_prefix": f"jobs/{JOB_ID}",
    "reporting_address": REPORTING,
    "resume_from": None,
}


def test_supervised_with_defaults():
    assert spec_of(a_job(), ["file-train"]) == SUPERVISED


def test_who_samples_a_reinforcement_runs_answers_is_the_trainers_setting():
    assert spec_of(a_job(), ["file-train"], generation="vllm") == {**SUPERVISED, "generation": "vllm"}


def test_a_jobs_integrations_reach_its_spec_as_settings_without_secrets():
    """The trackers' settings (docs/integrations.md), with the server's W&B mode; the secrets they read are the
    trainer's environment (scheduler/backends.py), never the spec."""
    from tunery.integrations import integrations_spec

    stored = [
        {"type": "wandb", "wandb": {"project": "p", "name": None, "entity": "e", "tags": ["t"], "run_id": JOB_ID}},
        {
            "type": "mlflow",
            "mlflow": {"tracking_uri": "https://mlflow.example", "experiment_name": None, "run_name": "r"},
        },
    ]
    wanted = integrations_spec(stored, wandb_mode="offline", wandb_base_url="", allow_private=False)
    spec = build_spec(
        a_job(),
        {"file-train": a_file("file-train")},
        None,
        base_model_path=BASE_PATH,
        store_url=STORE,
        reporting_address=REPORTING,
        device="cpu",
        integrations=wanted,
    )
    assert spec is not None
    assert spec.model_dump(mode="json")["integrations"] == {
        "wandb": {
            "project": "p",
            "name": None,
            "entity": "e",
            "tags": ["t"],
            "run_id": JOB_ID,
            "mode": "offline",
            "base_url": None,
        },
        "mlflow": {
            "tracking_uri": "https://mlflow.example",
            "experiment_name": None,
            "run_name": "r",
            "allow_private": False,
        },
    }


def test_eval_options_and_the_reference_file_come_from_tunery_eval():
    job = a_job()
    options = {"samples": 1, "reference_file": "file-ref", "gate": {"max_forgetting": 0.05}}
    job.extensions = {"tunery": {**(job.extensions or {}).get("tunery", {}), "eval": options}}
    spec = spec_of(job, ["file-train", "file-ref"])
    assert spec["eval"] == EvalOptions.model_validate(options).model_dump()
    assert spec["eval_reference_file"] == {"file_id": "file-ref", "key": "files/file-ref", "sha256": "sha-file-ref"}
    assert spec_of(job, ["file-train"]) is None  # the reference file is gone: no run


def test_the_stored_plan_is_embedded_whole():
    """What file validation resolved and stored is what the trainer gets, whatever the job's other fields say."""
    plan = resolve_plan(
        PlanRequest(method="kto", hyperparameters={"beta": 0.7, "n_epochs": 4}, training={"adapter": "full"}),
        50,
        has_validation=False,
        cpu_only=True,
    )
    job = a_job()
    job.set_plan(plan)
    job.hyperparameters = HP  # stale OpenAI fields do not matter
    assert spec_of(job, ["file-train"]) == {**SUPERVISED, "plan": plan.model_dump()}
    assert plan.model_dump()["method"] == "kto" and plan.adapter == "full" and plan.beta == 0.7


def test_dpo_with_beta_run_by_orpo():
    """A job queued before plans were stored: a dpo job's beta, the preference trainer named by
    tunery.method.trainer, its validation file; the preference methods' base learning rate (1e-4) times the
    multiplier, no packing (preference pairs are not packed)."""
    hp = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2.0}
    training = {**RESOLVED_TRAINING, "n_checkpoints": 2, "n_evals": 2, "warmup_ratio": None, "warmup_steps": 5}
    job = a_job(
        validation_file="file-valid",
        method={"type": "dpo", "dpo": {"hyperparameters": {**hp, "beta": 0.5}}},
        hyperparameters=hp,
        extensions={"tunery": {"training": training, "method": {"trainer": "orpo"}}},
    )
    assert spec_of(job, ["file-train", "file-valid"]) == {
        **SUPERVISED,
        "validation_file": {"file_id": "file-valid", "key": "files/file-valid", "sha256": "sha-file-valid"},
        "plan": {
            **PLAN,
            "method": "orpo",
            "beta": 0.5,
            "n_epochs": 2,
            "batch_size": 8,
            "learning_rate_multiplier": 2.0,
            "learning_rate": 0.0002,
            "warmup_steps": 5,
            "n_checkpoints": 2,
            "n_evals": 2,
            "packing": False,
        },
    }


def test_data_options_with_a_mix():
    data = {"drop_duplicates": True, "long_examples": "drop", "mix": {"file": "file-mix", "fraction": 0.25}}
    job = a_job(extensions={"tunery": {"training": RESOLVED_TRAINING, "data": data}})
    assert spec_of(job, ["file-train", "file-mix"]) == {
        **SUPERVISED,
        "data": {
            "drop_duplicates": True,
            "long_examples": "drop",
            "mix": {
                "file": {"file_id": "file-mix", "key": "files/file-mix", "sha256": "sha-file-mix"},
                "fraction": 0.25,
            },
        },
    }


def test_fine_tuning_a_fine_tuned_model_starts_from_its_adapter():
    job = a_job(model="ft:tiny:org:first:parent1", fine_tuned_model="ft:tiny:org:second:abc123")
    assert spec_of(job, ["file-train"], parent_prefix="models/ftjob-parent1") == {
        **SUPERVISED,
        "fine_tuned_model": "ft:tiny:org:second:abc123",
        "init_adapter_prefix": "models/ftjob-parent1",
    }


def test_a_score_model_graders_judges_are_in_the_spec_as_the_scheduler_resolved_them():
    """The trainer loads each judge from the spec (its base model's folder, an ft: judge's files); it never looks a
    model up by name (scheduler.dispatch resolves them for the job's project)."""
    judge = JudgeSpec(
        model="my-judge", base_model="tiny", base_model_path=BASE_PATH, adapter_prefix="jobs/ftjob-j/model/"
    )
    spec = spec_of(a_job(), ["file-train"], judges={"my-judge": judge})
    assert spec is not None
    assert spec["judges"] == {
        "my-judge": {
            "model": "my-judge",
            "base_model": "tiny",
            "base_model_path": BASE_PATH,
            "adapter_prefix": "jobs/ftjob-j/model/",
        }
    }


def test_a_cosine_metrics_embedding_model_is_in_the_spec_as_the_scheduler_resolved_it():
    """The trainer loads the embedding model from the folder the spec names (TUNERY_EMBEDDING_MODEL, resolved by
    scheduler.dispatch when a job's grader has a cosine metric)."""
    spec = spec_of(a_job(), ["file-train"], embedding_model=EmbeddingSpec(model="tiny", path=BASE_PATH))
    assert spec is not None and spec["embedding_model"] == {"model": "tiny", "path": BASE_PATH}


def test_a_job_run_before_resumes_from_its_latest_state():
    assert spec_of(a_job(attempts=2), ["file-train"]) == {**SUPERVISED, "resume_from": "latest"}


def test_a_job_queued_before_the_training_options_gets_their_defaults():
    """No stored tunery.training (queued by an older version): the defaults, one checkpoint and one evaluation per
    epoch."""
    job = a_job(validation_file="file-valid", extensions=None)
    assert spec_of(job, ["file-train", "file-valid"]) == {
        **SUPERVISED,
        "validation_file": {"file_id": "file-valid", "key": "files/file-valid", "sha256": "sha-file-valid"},
        "plan": {**PLAN, "n_checkpoints": 3, "n_evals": 3},
    }


@pytest.mark.parametrize(
    ("job", "files", "parent_prefix"),
    [
        (a_job(), [], None),  # the training file was deleted
        (
            a_job(
                extensions={
                    "tunery": {"training": RESOLVED_TRAINING, "data": {"mix": {"file": "file-mix", "fraction": 0.1}}}
                }
            ),
            ["file-train"],
            None,
        ),  # the mix file was deleted
        (a_job(model="ft:tiny:org:first:parent1"), ["file-train"], None),  # the parent model was deleted
    ],
)
def test_no_spec_when_an_input_is_gone(job: Job, files: list[str], parent_prefix: str | None):
    assert spec_of(job, files, parent_prefix) is None


def test_an_evaluation_s_spec_names_the_model_its_files_and_the_file():
    """An evaluation (docs/evals.md): the model it evaluates and where its files are, its file as the one data file,
    its options, the plan of the model's job; no resume, no validation file; None once the model or file is gone."""
    options = {"samples": 1, "max_new_tokens": 4, "max_examples": 3, "reference_file": "file-ref"}
    job = a_job(
        id="evaljob-1",
        kind="evaluation",
        model="ft:tiny:org:none:abc123:ckpt-step-2",
        training_file="file-eval",
        fine_tuned_model=None,
        attempts=1,
        extensions={"tunery": {"eval": options}},
        plan=PLAN,
    )
    spec = spec_of(job, ["file-eval", "file-ref"], "jobs/ftjob-x/checkpoints/step-2")
    assert spec is not None
    assert spec["task"] == "evaluation" and spec["fine_tuned_model"] == job.model
    assert spec["init_adapter_prefix"] == "jobs/ftjob-x/checkpoints/step-2"
    assert spec["training_file"]["file_id"] == "file-eval" and spec["validation_file"] is None
    assert spec["eval_reference_file"]["file_id"] == "file-ref"
    assert spec["eval"] == {**EvalOptions().model_dump(), **options}
    assert spec["plan"] == TrainingPlan.model_validate(PLAN).model_dump()
    assert spec["resume_from"] is None and spec["output_prefix"] == "jobs/evaljob-1"
    assert spec_of(job, ["file-eval", "file-ref"], None) is None  # the model is gone
    assert spec_of(job, ["file-ref"], "jobs/ftjob-x/model") is None  # the file is gone
    assert job.input_files() == [("file", "file-eval"), ("tunery.eval.reference_file", "file-ref")]


def test_an_export_s_spec_names_the_model_its_files_and_the_format():
    """An export (docs/exports.md): the model it merges and where its files are, its format and precision, the plan
    of the model's job, the fields every kind shares (run_spec); no data file, no eval report, no resume; None once
    the model is gone."""
    job = a_job(
        id="exportjob-1",
        kind="export",
        model="ft:tiny:org:none:abc123:ckpt-step-2",
        training_file="",
        fine_tuned_model=None,
        attempts=1,
        extensions={"tunery": {"export": {"format": "gguf", "dtype": "float32", "gguf_type": "q8_0"}}},
        plan=PLAN,
    )
    spec = spec_of(job, [], "jobs/ftjob-x/checkpoints/step-2")
    assert spec is not None
    assert spec["task"] == "export" and spec["fine_tuned_model"] == job.model
    assert spec["init_adapter_prefix"] == "jobs/ftjob-x/checkpoints/step-2"
    assert spec["export"] == {"format": "gguf", "dtype": "float32", "gguf_type": "q8_0"}
    assert spec["training_file"] is None and spec["validation_file"] is None and spec["eval"] is None
    assert spec["plan"] == TrainingPlan.model_validate(PLAN).model_dump()
    assert spec["resume_from"] is None and spec["output_prefix"] == "jobs/exportjob-1"
    shared = {k: v for k, v in SUPERVISED.items() if k in ("organization_id", "project_id", "base_model", "seed")}
    assert {k: spec[k] for k in shared} == shared
    assert (spec["base_model_path"], spec["object_store"], spec["reporting_address"], spec["device"]) == (
        BASE_PATH,
        STORE,
        REPORTING,
        "cpu",
    )
    assert spec_of(job, [], None) is None  # the model is gone
    assert job.input_files() == []


def test_the_cosine_metric_of_a_reinforcement_jobs_grader_is_found_where_it_is():
    """What scheduler.dispatch resolves TUNERY_EMBEDDING_MODEL for (and fails the job naming, when none is set)."""
    from scheduler.preprocess import cosine_metric
    from tunery.plan import ReinforcementPlan, TrainingPlan

    cosine = {"type": "text_similarity", "name": "c", "input": "a", "reference": "b", "evaluation_metric": "cosine"}
    grader = {"type": "multi", "name": "m", "graders": {"c": cosine}, "calculate_output": "c"}
    rl = ReinforcementPlan(grader=grader, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0)
    plan = TrainingPlan(method="grpo", n_epochs=1, batch_size=2, learning_rate=1e-4, reinforcement=rl)
    assert cosine_metric(a_job(kind="fine_tune", plan=plan.model_dump())) == "method.reinforcement.grader.graders.c"
    fuzzy = {**grader, "graders": {"c": {**cosine, "evaluation_metric": "fuzzy_match"}}}
    other = plan.model_copy(update={"reinforcement": rl.model_copy(update={"grader": fuzzy})})
    assert cosine_metric(a_job(kind="fine_tune", plan=other.model_dump())) is None
    assert cosine_metric(a_job()) is None
