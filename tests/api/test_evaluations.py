"""On-demand evaluations (``/v1/tunery/evaluations``, docs/evals.md): a fine-tuned model and one of its checkpoints
evaluated on one file by the real trainer, their reports compared; the refusals; cancel; a trainer that fails.

Files and fine-tuning jobs go through the official OpenAI SDK; the evaluation routes, which the SDK does not know,
through the SDK's generic ``post``/``get`` where a typed answer is read, else plain HTTP."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.cli import app
from api.protocol.evaluations import Evaluation
from tests.conftest import TINY, RunningServer, chat_lines
from tests.schema import validate
from tunery import ids
from tunery.db import FineTunedModel, Job
from tunery.evalreport import EvalReport
from tunery.files import report_key
from tunery.plan import TrainingPlan

EV = "/v1/tunery/evaluations"
OPTIONS = {"samples": 2, "max_new_tokens": 4, "max_examples": 4}
DONE = {"succeeded", "failed", "cancelled"}


CLI = CliRunner(env={"COLUMNS": "250"})
# A grader for the reinforcement prompts below: 1 when the answer holds the line's keyword.
KEYWORD = {
    "type": "string_check",
    "name": "keyword",
    "input": "{{sample.output_text}}",
    "reference": "{{item.keyword}}",
    "operation": "like",
}
RFT = b"\n".join(
    json.dumps({"messages": [{"role": "user", "content": f"Name a fruit ({i})."}], "keyword": "apple"}).encode()
    for i in range(3)
)


def cli_args(srv: RunningServer) -> list[str]:
    return ["--base-url", f"{srv.base_url}/v1", "--api-key", "test-key"]


def validate_evaluation(ev: dict[str, Any]) -> None:
    """The object is what the API publishes (its OpenAPI schema's ``Evaluation``), every field typed."""
    assert Evaluation.model_validate(ev).model_dump(mode="json") == ev


def wait_evaluation(srv: RunningServer, evaluation_id: str, statuses: set[str], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = srv.http.get(f"{EV}/{evaluation_id}").json()
        if ev["status"] in statuses:
            return ev
        time.sleep(0.3)
    raise TimeoutError(f"evaluation {evaluation_id} still {ev['status']}")


def stored_model(srv: RunningServer, project: str = "proj_default", prefix: str | None = None, base: str = TINY) -> str:
    """An ft: model row of ``project`` (and the succeeded job that made it), with no files unless ``prefix`` has
    them: for the checks that need no trained model."""
    job_id = ids.job_id()
    name = ids.fine_tuned_model_name(base, "personal", "stored", job_id)
    plan = TrainingPlan(n_epochs=1, batch_size=1, learning_rate=1e-4)
    with srv.app.state.ctx.db.session() as s:
        s.add(
            Job(
                id=job_id,
                organization_id="org-default",
                project_id=project,
                created_at=int(time.time()),
                status="succeeded",
                model=base,
                base_model=base,
                training_file="file-gone",
                seed=1,
                method={"type": "supervised"},
                hyperparameters={},
                plan=plan.model_dump(),
                result_files=[],
                attempts=1,
                fine_tuned_model=name,
            )
        )
        s.add(
            FineTunedModel(
                id=name,
                kind="fine_tuned",
                base_model=base,
                job_id=job_id,
                object_prefix=prefix or f"jobs/{job_id}/model",
                owned_by="personal",
                created_at=int(time.time()),
                organization_id="org-default",
                project_id=project,
            )
        )
    return name


@pytest.mark.integration
def test_a_model_and_its_checkpoint_are_evaluated_on_one_file_and_compared(server: RunningServer) -> None:
    c = server.client
    train = c.files.create(file=("train.jsonl", chat_lines(10)), purpose="fine-tune")
    data = c.files.create(file=("eval.jsonl", chat_lines(4, "Answer to {q}")), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=TINY,
        training_file=train.id,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}}},
        extra_body={"tunery": {"eval": {"enabled": False}}},  # the job's own reports are not what is tested here
    )
    job = server.wait_job(job.id, DONE, timeout=240)
    assert job.status == "succeeded", (job.error, server.events(job.id))
    checkpoint = min(c.fine_tuning.jobs.checkpoints.list(job.id).data, key=lambda k: k.step_number)
    models = [job.fine_tuned_model, checkpoint.fine_tuned_model_checkpoint]

    # The final model through the API, the checkpoint through `tunery evals create`.
    r = server.http.post(EV, json={"model": models[0], "file": data.id, "seed": 5, "eval": OPTIONS})
    assert r.status_code == 200, r.text
    ev = r.json()
    validate_evaluation(ev)
    assert ev["id"].startswith("evaljob-") and ev["object"] == "tunery.evaluation"
    assert (ev["status"], ev["model"], ev["file"], ev["base_model"]) == ("validating_files", models[0], data.id, TINY)
    assert ev["eval"] == {**ev["eval"], **OPTIONS} and ev["seed"] == 5 and ev["report"] is None
    options = ["--samples", "2", "--max-new-tokens", "4", "--max-examples", "4", "--seed", "5"]
    out = CLI.invoke(app, ["evals", "create", models[1], data.id, *options, *cli_args(server)])
    assert out.exit_code == 0, out.output
    created = [ev["id"], out.output.strip()]

    reports = []
    for evaluation_id, model in zip(created, models, strict=True):
        ev = wait_evaluation(server, evaluation_id, DONE)
        assert ev["status"] == "succeeded", ev
        summary = ev["report"]
        assert ev["result_files"] == [summary["file_id"]] and summary["validation_loss"] > 0
        # The JSON route and the file (purpose fine-tune-results, as a job's reports) hold the same typed report.
        raw = server.http.get(f"{EV}/{evaluation_id}/report")
        assert raw.status_code == 200, raw.text
        report = EvalReport.model_validate(raw.json())
        f = c.files.retrieve(summary["file_id"])
        assert f.purpose == "fine-tune-results"
        # (base64, as OpenAI serves every fine-tune-results file)
        assert EvalReport.model_validate_json(base64.b64decode(c.files.content(f.id).content)) == report
        # It names what it measured: the model, the file, and the base as its baseline.
        assert (report.model, report.evaluated_file, report.job_id) == (model, data.id, evaluation_id)
        assert report.base_model == TINY and report.baseline == "the base model"
        assert report.validation is not None and report.validation.model.examples == 4
        assert report.validation_loss_percentiles is not None and report.hardest_examples
        assert len(report.samples) == 2 and report.samples_from == "validation_file"
        assert report.forgetting is not None and report.preference is None
        assert report.provenance["data_files"]["file"]["file_id"] == data.id
        reports.append(report)

    # Two versions on the same data: the same examples, the same baseline, and each its own figures.
    a, b = reports
    assert a.validation and b.validation
    assert a.validation.base.loss == pytest.approx(b.validation.base.loss, rel=1e-5)
    assert a.validation.base.tokens == b.validation.base.tokens
    assert [s.line for s in a.samples] == [s.line for s in b.samples]
    assert [s.base for s in a.samples] == [s.base for s in b.samples]
    assert a.step > b.step
    assert a.validation.model.loss != b.validation.model.loss

    # The terminal's view of a report: `tunery evals report` (and its --json).
    out = CLI.invoke(app, ["evals", "report", created[1], *cli_args(server)])
    assert out.exit_code == 0, out.output
    assert models[1] in out.output and f"evaluation {created[1]} on {data.id}" in out.output
    assert "Validation" in out.output and f"{b.validation.model.loss:.4f}" in out.output
    out = CLI.invoke(app, ["evals", "report", created[1], "--json", *cli_args(server)])
    assert out.exit_code == 0 and EvalReport.model_validate_json(out.output) == b

    # An evaluation is not a fine-tuning job: OpenAI's list and routes never show it.
    assert {j.id for j in c.fine_tuning.jobs.list().data} == {job.id}
    assert server.http.get(f"/v1/fine_tuning/jobs/{created[0]}").status_code == 404
    listed = server.http.get(EV, params={"limit": 1}).json()
    assert [e["id"] for e in listed["data"]] == [created[1]] and listed["has_more"] is True
    events = [e.message for e in c.fine_tuning.jobs.list_events(job.id).data]
    assert not any("Evaluat" in m for m in events)

    # A model no reinforcement job made, graded on reinforcement prompts by a grader given with the evaluation
    # (through `tunery evals create --grader`): the report's reward section, base against model, and no loss.
    rft = c.files.create(file=("rft.jsonl", RFT), purpose="fine-tune")
    grader = ["--grader", json.dumps(KEYWORD), "--max-examples", "2", "--seed", "5", "--json"]
    out = CLI.invoke(app, ["evals", "create", models[0], rft.id, *grader, "--wait", *cli_args(server)])
    assert out.exit_code == 0, out.output
    graded = EvalReport.model_validate_json(out.output)
    assert graded.model == models[0] and graded.evaluated_file == rft.id and graded.validation is None
    reward = graded.reward
    assert reward is not None and reward.grader == "keyword (string_check)" and reward.prompts == 2
    assert reward.max_completion_length == 256 and reward.eval_samples == 1
    assert reward.greedy.base.answers == reward.greedy.model.answers == 2
    assert 0.0 <= reward.greedy.model.mean <= 1.0


def test_refusals_are_the_other_routes(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: an evaluation stays queued
    c = srv.client
    model = stored_model(srv)
    theirs = stored_model(srv, project="proj_other")
    data = c.files.create(file=("eval.jsonl", chat_lines(3)), purpose="fine-tune")
    rft = c.files.create(file=("rft.jsonl", RFT), purpose="fine-tune")
    other_purpose = c.files.create(file=("u.jsonl", chat_lines(3)), purpose="user_data")
    c.files.wait_for_processing(rft.id, poll_interval=0.1, max_wait_seconds=30)

    def refused(body: dict[str, Any], status: int, code: str | None, param: str | None) -> dict[str, Any]:
        r = srv.http.post(EV, json=body)
        assert r.status_code == status, r.text
        validate(r.json(), "ErrorResponse")
        error = r.json()["error"]
        assert (error["code"], error["param"]) == (code, param), error
        return dict(error)

    # An unknown model and another project's are the same 404 as GET /v1/models/{model}.
    for name in ("ft:nope", theirs):
        error = refused({"model": name, "file": data.id}, 404, "model_not_found", "model")
        assert error == srv.http.get(f"/v1/models/{name}").json()["error"]
    # A base model has nothing to be compared with.
    refused({"model": TINY, "file": data.id}, 400, "invalid_model", "model")
    # The file: the project's, of purpose fine-tune, with answers to score.
    refused({"model": model, "file": "file-nope"}, 400, "invalid_file_id", "file")
    refused({"model": model, "file": other_purpose.id}, 400, "invalid_file_purpose", "file")
    refused({"model": model, "file": rft.id}, 400, "invalid_file", "file")
    refused(
        {"model": model, "file": data.id, "eval": {"reference_file": "file-nope"}},
        400,
        "invalid_file_id",
        "eval.reference_file",
    )
    # A grader of its own: checked as a reinforcement job's (the field at fault named under `grader`; a judge the
    # project may use), and only for reinforcement prompts (chat examples are scored by loss, not graded).
    refused({"model": model, "file": rft.id, "grader": {"type": "nope"}}, 400, "invalid_grader", "grader.type")
    judge = {**KEYWORD, "type": "score_model", "model": "ft:nope", "input": [{"role": "user", "content": "x"}]}
    del judge["operation"], judge["reference"]
    refused({"model": model, "file": rft.id, "grader": judge}, 400, "model_not_found", "grader.model")
    error = refused({"model": model, "file": data.id, "grader": KEYWORD}, 400, "invalid_file", "file")
    assert "holds chat examples" in error["message"] and "without a grader" in error["message"]
    # Given one, reinforcement prompts are graded for a model no reinforcement job made: the evaluation shows its
    # grader, and its plan (all the scheduler and the trainer read) samples as a reinforcement job would by default.
    graded = srv.http.post(EV, json={"model": model, "file": rft.id, "grader": KEYWORD})
    assert graded.status_code == 200, graded.text
    validate_evaluation(graded.json())
    assert graded.json()["grader"] == KEYWORD
    with srv.app.state.ctx.db.session() as s:
        plan = s.scalars(select(Job).where(Job.id == graded.json()["id"])).one().training_plan()
    assert plan is not None and plan.reinforcement is not None and plan.reinforcement.grader == KEYWORD
    assert (plan.reinforcement.max_completion_length, plan.reinforcement.eval_samples) == (256, 1)
    assert srv.http.get(f"{EV}/{graded.json()['id']}").json()["grader"] == KEYWORD
    assert srv.http.post(EV, json={"model": model, "file": data.id}).json()["grader"] is None
    # Every field is Tunery's: an unknown one (a gate, say) is a 400.
    r = srv.http.post(EV, json={"model": model, "file": data.id, "eval": {"gate": {"max_forgetting": 0.1}}})
    assert r.status_code == 400 and "gate" in r.json()["error"]["param"]

    out = CLI.invoke(app, ["evals", "create", TINY, data.id, *cli_args(srv)])
    assert out.exit_code == 1 and "is a base model" in out.output

    # Cancel: as a job's, once, then refused.
    ev = srv.http.post(EV, json={"model": model, "file": data.id}).json()
    assert wait_evaluation(srv, ev["id"], {"queued"}, timeout=30)["error"] is None
    cancelled = srv.http.post(f"{EV}/{ev['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = srv.http.post(f"{EV}/{ev['id']}/cancel")
    assert again.status_code == 400 and again.json()["error"]["code"] == "evaluation_not_cancellable"
    missing = srv.http.get(f"{EV}/{ev['id']}/report")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "evaluation_id"
    assert srv.http.get(f"{EV}/evaljob-nope").status_code == 404
    assert ev["id"] not in {j.id for j in c.fine_tuning.jobs.list().data}  # the stored models' jobs only

    # A file whose validation report the API cannot read (not validated yet, say) is checked by the scheduler when it
    # validates the evaluation's file, by the same rule: the evaluation fails, naming the file.
    srv.app.state.ctx.store.delete(report_key(data.id))
    ev = srv.http.post(EV, json={"model": model, "file": data.id, "grader": KEYWORD}).json()
    failed = wait_evaluation(srv, ev["id"], {"failed", "queued"}, timeout=30)
    assert (failed["status"], failed["error"]["code"], failed["error"]["param"]) == ("failed", "invalid_file", "file")
    assert "holds chat examples" in failed["error"]["message"]


@pytest.mark.integration
def test_a_failed_trainer_fails_the_evaluation_with_its_error(server: RunningServer) -> None:
    model = stored_model(server)  # a model row whose files are not in the object store
    data = server.client.files.create(file=("eval.jsonl", chat_lines(3)), purpose="fine-tune")
    ev = server.http.post(EV, json={"model": model, "file": data.id, "eval": OPTIONS}).json()
    done = wait_evaluation(server, ev["id"], DONE, timeout=120)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "model_not_available" and done["error"]["param"] == "model"
    assert "no complete files" in done["error"]["message"]
    assert done["report"] is None and done["result_files"] == []
    assert json.loads(server.http.get(f"{EV}/{ev['id']}/report").text)["error"]["code"] is None
