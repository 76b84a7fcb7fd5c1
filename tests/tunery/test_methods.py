"""What each method supports (``tunery/methods.py``), as the API and the dry run read it: unsupported options are
a 400 naming the parameter; supported combinations that used to be ignored or mistrained are accepted and reach the
stored plan (regressions: a qlora or full DPO job trained plain LoRA; a DPO job on an ``ft:`` model trained a fresh
adapter; the dry run refused ``ft:`` models)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_jobs import preference_lines
from tests.conftest import TINY
from tests.schema import validate
from tests.serving_fixtures import register_model
from tunery.methods import ADAPTERS, METHODS, PRECISIONS, method_info, unsupported

PARENT = "ft:tiny-llama:personal::parent1"
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}


def test_every_method_supports_every_adapter_and_precision_and_continuing() -> None:
    for info in METHODS.values():
        assert set(info.adapters) == set(ADAPTERS) and set(info.precisions) == set(PRECISIONS)
        assert info.continues_fine_tuned
    problem = unsupported(method_info("kto"), adapter="lora", precision="auto", train_on_inputs=True)
    assert problem is not None and problem.param == "tunery.training.train_on_inputs"
    assert unsupported(method_info("supervised"), adapter="full", precision="fp32", train_on_inputs=True) is None


def test_the_trainer_registers_exactly_the_methods_of_the_table() -> None:
    from trainer.methods import registered

    assert set(registered()) == set(METHODS)
    for name, method in registered().items():
        assert method.info is METHODS[name]


@pytest.fixture
def preference_server(tiny_server_factory: Any) -> Any:
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the jobs stay queued
    srv.pairs = srv.client.files.create(file=("p.jsonl", preference_lines(40)), purpose="fine-tune").id
    srv.client.files.wait_for_processing(srv.pairs, poll_interval=0.1, max_wait_seconds=30)
    register_model(srv, PARENT, "jobs/ftjob-parent1/model/", {})
    return srv


@pytest.mark.parametrize("route", ["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/dry_run"])
@pytest.mark.parametrize(
    ("training", "param"),
    [
        ({"train_on_inputs": True}, "tunery.training.train_on_inputs"),
        ({"packing": True}, "tunery.training.packing"),
    ],
)
def test_options_a_preference_method_does_not_support_are_a_400(
    preference_server: Any, route: str, training: dict[str, Any], param: str
) -> None:
    srv = preference_server
    for trainer in ("dpo", "orpo", "kto"):
        body = {"model": TINY, "training_file": srv.pairs, "method": DPO}
        body["tunery"] = {"training": training, "method": {"trainer": trainer}}
        r = srv.http.post(route, json=body)
        assert r.status_code == 400, r.text
        validate(r.json(), "ErrorResponse")
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, "unsupported_method")
    assert srv.client.fine_tuning.jobs.list().data == []


@pytest.mark.parametrize("trainer", ["dpo", "orpo", "kto"])
def test_a_preference_job_keeps_its_adapter_and_its_parent(preference_server: Any, trainer: str) -> None:
    """Accepted, validated and planned as asked: the adapter and precision, the method's own base learning rate,
    no packing; on an ft: model, the dry run answers as for its base model and the job continues the parent."""
    srv = preference_server
    for model, adapter in ((TINY, "full"), (TINY, "qlora"), (PARENT, "lora")):
        body = {
            "model": model,
            "training_file": srv.pairs,
            "method": DPO,
            "tunery": {"training": {"adapter": adapter, "precision": "fp32"}, "method": {"trainer": trainer}},
        }
        dry = srv.http.post("/v1/fine_tuning/jobs/dry_run", json=body)
        assert dry.status_code == 200, dry.text
        assert (dry.json()["adapter"], dry.json()["trainer"]) == (adapter, trainer)
        r = srv.http.post("/v1/fine_tuning/jobs", json=body)
        assert r.status_code == 200, r.text
        job = srv.wait_job(r.json()["id"], {"queued", "failed"}, timeout=30)
        assert job.status == "queued", (job.error, srv.events(job.id))
        ctx = srv.app.state.ctx
        from tunery.db import Job

        with ctx.db.session() as s:
            row = s.query(Job).filter(Job.id == job.id).one()
            plan = row.training_plan()
            assert plan is not None
        assert (plan.method, plan.adapter, plan.precision, plan.packing) == (trainer, adapter, "fp32", False)
        assert plan.learning_rate == METHODS[trainer].base_learning_rate(adapter)
        assert job.model == model
