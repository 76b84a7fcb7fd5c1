"""The typed layer of the fine-tuning jobs family (api/protocol/jobs.py, api/services/jobs.py): an unknown OpenAI
field in a job request is accepted and logged, an unknown ``tunery.*`` field is a 400 naming it, and the service
runs without HTTP, answering OpenAI's objects. (Its routes against OpenAI's schema:
tests/api/test_openapi_contract.py.)"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import errors
from api.context import AppContext, Tenant
from api.protocol.files import CreateFileRequest
from api.protocol.jobs import (
    CreateJob,
    ListJobCheckpointsRequest,
    ListJobEventsRequest,
    ListJobsRequest,
    TuneryExtensions,
)
from api.services.files import FileService
from api.services.jobs import JobService, find_job
from scheduler.reporting import servable_model
from tests.conftest import chat_lines
from tests.schema import validate
from tunery import ids, jobstate
from tunery.audit import BOOTSTRAP
from tunery.db import Checkpoint
from tunery.db.ops import now
from tunery.plan import DPOHyperparameters, Hyperparameters


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API alone (no scheduler): jobs stay as the API leaves them."""
    from api.server import build
    from tunery.settings import Settings

    data = tmp_path_factory.mktemp("jobs-contract")
    settings = Settings(data_dir=data, demo_model=False, base_models={"m": "/nonexistent"}, allow_open=True)
    app, shutdown = build(settings, role="api")
    yield app
    shutdown()


@pytest.fixture(scope="module")
def http(app: Any) -> TestClient:
    return TestClient(app)


@pytest.fixture(scope="module")
def train(app: Any) -> str:
    ctx: AppContext = app.state.ctx
    files = FileService(ctx, Tenant(ctx.settings.organization_id, ctx.settings.project_id), BOOTSTRAP)
    return files.create(CreateFileRequest(purpose="fine-tune", filename="t.jsonl"), io.BytesIO(chat_lines(12))).id


def _service(app: Any) -> JobService:
    ctx: AppContext = app.state.ctx
    return JobService(ctx, Tenant(ctx.settings.organization_id, ctx.settings.project_id), BOOTSTRAP)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tunery.api"]


# ---- requests ----------------------------------------------------------------------------------------------------
def test_an_unknown_openai_field_of_a_job_request_is_accepted_and_logged(
    http: TestClient, train: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = {
        "model": "m",
        "training_file": train,
        "future_field": {"level": 3},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}, "future_option": True}},
    }
    with caplog.at_level(logging.WARNING, logger="tunery.api"):
        r = http.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    validate(job, "FineTuningJob")
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    assert "future_field" not in job and "tunery" not in job
    assert _warnings(caplog) == [
        "CreateJob: accepted field(s) Tunery does not know: future_field, method.supervised.future_option"
    ]
    # The fields OpenAI defines are known, even those Tunery refuses or ignores.
    caplog.clear()
    known = {"model": "m", "training_file": train, "suffix": "s", "seed": 3, "metadata": {"a": "b"}, "integrations": []}
    with caplog.at_level(logging.WARNING, logger="tunery.api"):
        assert http.post("/v1/fine_tuning/jobs", json=known).status_code == 200
    assert _warnings(caplog) == []


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/dry_run"])
@pytest.mark.parametrize(
    ("tunery", "param"),
    [
        ({"training": {"epochs": 2}}, "tunery.training.epochs"),
        ({"training": {"lora": {"rank": 8}}}, "tunery.training.lora.rank"),
        ({"data": {"dedupe": True}}, "tunery.data.dedupe"),
        ({"data": {"mix": {"file": "file-x", "fraction": 0.1, "seed": 3}}}, "tunery.data.mix.seed"),
        ({"method": {"trainer": "dpo", "beta": 0.1}}, "tunery.method.beta"),
        ({"other": {}}, "tunery.other"),
    ],
)
def test_an_unknown_tunery_field_is_a_400_naming_it(
    http: TestClient, train: str, path: str, tunery: dict[str, Any], param: str
) -> None:
    before = len(http.get("/v1/fine_tuning/jobs", params={"limit": 1000}).json()["data"])
    r = http.post(path, json={"model": "m", "training_file": train, "tunery": tunery})
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    err = r.json()["error"]
    assert (err["param"], err["type"]) == (param, "invalid_request_error")
    assert f"'{param}'" in err["message"]
    assert len(http.get("/v1/fine_tuning/jobs", params={"limit": 1000}).json()["data"]) == before


def test_a_mistyped_hyperparameter_is_a_400(http: TestClient, train: str) -> None:
    """OpenAI's hyperparameters are the training plan's request (tunery/plan.py): a typo there is no new field."""
    for body, param in (
        ({"hyperparameters": {"n_epoch": 2}}, "hyperparameters.n_epoch"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"gamma": 1}}}}, "method.dpo.hyperparameters.gamma"),
    ):
        r = http.post("/v1/fine_tuning/jobs", json={"model": "m", "training_file": train, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    yield model
    for field in model.model_fields.values():
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _models(arg)


def test_every_section_under_tunery_and_the_hyperparameters_forbid_unknown_fields() -> None:
    """TuneryExtension's rule, also for the training plan's models it reuses (they cannot extend it)."""
    sections = {m.__name__: m.model_config.get("extra") for m in _models(TuneryExtensions)}
    assert {
        "TuneryExtensions",
        "DataQualityOptions",
        "MixOptions",
        "MethodOptions",
        "TrainingOptions",
        "LoraOptions",
    } <= set(sections)
    assert set(sections.values()) == {"forbid"}
    assert Hyperparameters.model_config.get("extra") == DPOHyperparameters.model_config.get("extra") == "forbid"


# ---- the service, without HTTP -----------------------------------------------------------------------------------
def test_the_jobs_service_runs_without_http(app: Any, train: str) -> None:
    svc, ctx = _service(app), app.state.ctx
    job = svc.create(CreateJob(model="m", training_file=train, suffix="svc", metadata={"team": "svc"}))
    assert (job.status, job.fine_tuned_model, job.error, job.tunery) == ("validating_files", None, None, None)
    assert job.hyperparameters.n_epochs == "auto" and job.method.type == "supervised" and job.method.dpo is None
    sent = job.model_dump(mode="json")
    validate(sent, "FineTuningJob")
    assert "tunery" not in sent and "dpo" not in sent["method"]  # left out, not null
    assert svc.retrieve(job.id) == job
    listed = svc.list(ListJobsRequest(metadata={"team": "svc"}))
    assert [j.id for j in listed.data] == [job.id] and (listed.first_id, listed.last_id) == (job.id, job.id)
    validate(listed.model_dump(mode="json"), "ListPaginatedFineTuningJobsResponse")
    events = svc.events(job.id, ListJobEventsRequest())
    assert [e.message for e in events.data] == [
        f"Validating training file: {train}",
        f"Created fine-tuning job: {job.id}",
    ]
    validate(events.model_dump(mode="json"), "ListFineTuningJobEventsResponse")

    # A job that asked for extensions carries them; a dpo job shows its trainer.
    dpo = svc.create(
        CreateJob.model_validate(
            {"model": "m", "training_file": train, "method": {"type": "dpo"}, "tunery": {"method": {"trainer": "kto"}}}
        )
    )
    assert dpo.tunery is not None and dpo.tunery.method is not None and dpo.tunery.method.trainer == "kto"
    assert dpo.method.dpo is not None and dpo.method.dpo.hyperparameters.beta == "auto"
    assert set(dpo.model_dump(mode="json")["tunery"]) == {"data", "training", "method", "scheduling"}

    # Typed errors, not HTTP ones.
    with pytest.raises(errors.NotFound) as missing:
        svc.retrieve("ftjob-nope")
    assert missing.value.param == "fine_tuning_job_id"
    for bad, param in (
        (CreateJob(model="nope", training_file=train), "model"),
        (CreateJob(model="m", training_file="file-nope"), "training_file"),
        (CreateJob(model="m", training_file=train, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ):
        for call in (svc.create, svc.dry_run):  # the dry run refuses what creation refuses (prepare_job)
            with pytest.raises(errors.InvalidRequest) as refused:
                call(bad)
            assert refused.value.param == param
    with pytest.raises(errors.InvalidRequest) as not_ready:
        svc.dry_run(CreateJob(model="m", training_file=train))
    assert not_ready.value.code == "model_not_ready"  # past the checks: the base model's files are missing
    with pytest.raises(errors.InvalidRequest) as not_running:
        svc.pause(job.id)
    assert not_running.value.code == "job_not_pausable"

    # Pause and resume a running job; its checkpoints; cancel it.
    with ctx.db.session() as s:
        row = find_job(s, svc.tenant, job.id)
        jobstate.queue(row)
        jobstate.start(row, now())
        row.fine_tuned_model = ids.fine_tuned_model_name("m", "personal", row.suffix, row.id)
        for step, metrics in (
            (1, {"step": 1, "train_loss": 2.0}),
            (2, {"step": 2, "train_loss": 1.0, "valid_loss": 1.5}),
        ):
            name = ids.checkpoint_model_name(row.fine_tuned_model, step)
            prefix = f"jobs/{row.id}/checkpoints/step-{step}"
            s.add(
                Checkpoint(
                    id=ids.checkpoint_id(),
                    job_id=row.id,
                    created_at=now(),
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=name,
                    object_prefix=prefix,
                )
            )
            s.add(servable_model(row, name, "checkpoint", prefix))
    assert svc.pause(job.id).status == "paused"
    with pytest.raises(errors.InvalidRequest):
        svc.pause(job.id)
    assert svc.resume(job.id).status == "queued"
    with pytest.raises(errors.InvalidRequest) as not_paused:
        svc.resume(job.id)
    assert not_paused.value.code == "job_not_resumable"
    checkpoints = svc.checkpoints(job.id, ListJobCheckpointsRequest())
    sent_checkpoints = checkpoints.model_dump(mode="json")
    validate(sent_checkpoints, "ListFineTuningJobCheckpointsResponse")
    assert [(c["step_number"], c["metrics"], c["tunery"]) for c in sent_checkpoints["data"]] == [
        (2, {"step": 2, "train_loss": 1.0, "valid_loss": 1.5}, {"best": True}),
        (1, {"step": 1, "train_loss": 2.0}, {"best": False}),  # what was not measured is left out, not null
    ]
    assert svc.cancel(job.id).status == "cancelled"
    with pytest.raises(errors.InvalidRequest) as twice:
        svc.cancel(job.id)
    assert twice.value.code == "job_not_cancellable"
    messages = [e.message for e in svc.events(job.id, ListJobEventsRequest(limit=2)).data]
    assert messages == [
        "Fine-tuning job cancelled",
        "Fine-tuning job resumed: queued to continue from its last checkpoint",
    ]
