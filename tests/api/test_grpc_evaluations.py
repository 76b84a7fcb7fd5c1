"""On-demand evaluations over gRPC (``EvaluationService``, protos/tunery/v1/evaluations.proto), each RPC the twin of
its ``/v1/tunery/evaluations`` route, through grpc_cases' cases and helpers: the same answers, the same refusals
mapped to status codes with OpenAI's error, the same roles and tenancy, and one evaluation run by the real trainer
whose object, list and report read the same over both transports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from api.grpc.convert import to_message
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, RunningServer, chat_lines
from tests.grpc_cases import (
    Api,
    Case,
    assert_not_found_as_unknown,
    assert_refused_as,
    assert_same_answer,
    assert_same_refusal,
    project_keys,
    rest_status,
)
from tunery.evalreport import EvalReport
from tunery.v1 import evaluations_pb2 as epb
from tunery.v1 import fine_tuning_pb2 as jpb

EV = "/v1/tunery/evaluations"
OPTIONS = {"samples": 1, "max_new_tokens": 2, "max_examples": 2}
DONE = {"succeeded", "failed", "cancelled"}


def create(body: dict[str, Any]) -> Case:
    """A CreateEvaluation and its REST twin from one JSON body, its strings filled with the objects (``{model}``):
    the message is built from the body by protobuf's own JSON mapping, not by the server's converter."""

    def filled(o: dict[str, str]) -> dict[str, Any]:
        return {k: v.format(**o) if isinstance(v, str) else v for k, v in body.items()}

    return Case(
        "EvaluationService/CreateEvaluation",
        lambda o: json_format.ParseDict(filled(o), epb.CreateEvaluationRequest()),
        EV,
        body=filled,
    )


GET = Case(
    "EvaluationService/GetEvaluation",
    lambda o: epb.GetEvaluationRequest(evaluation_id=o["evaluation_id"]),
    f"{EV}/{{evaluation_id}}",
)
CANCEL = Case(
    "EvaluationService/CancelEvaluation",
    lambda o: epb.CancelEvaluationRequest(evaluation_id=o["evaluation_id"]),
    f"{EV}/{{evaluation_id}}/cancel",
)
REPORT = Case(
    "EvaluationService/GetEvaluationReport",
    lambda o: epb.GetEvaluationReportRequest(evaluation_id=o["evaluation_id"]),
    f"{EV}/{{evaluation_id}}/report",
)


def listing(**query: Any) -> Case:
    return Case("EvaluationService/ListEvaluations", lambda o: epb.ListEvaluationsRequest(**query), EV, query)


# Refusals: (case, REST status, code or None when it is not checked, param), the same over both transports.
REFUSALS = [
    pytest.param(create({"model": TINY, "file": "{file_id}"}), 400, "invalid_model", "model", id="base-model"),
    pytest.param(create({"model": "ft:nope", "file": "{file_id}"}), 404, "model_not_found", "model", id="no-model"),
    pytest.param(create({"model": "{model}", "file": "file-nope"}), 400, "invalid_file_id", "file", id="no-file"),
    pytest.param(create({"model": "{model}"}), 400, None, "file", id="file-missing"),
    pytest.param(
        create({"model": "{model}", "file": "{file_id}", "eval": {"samples": 99}}),
        400,
        None,
        "eval.samples",
        id="bad-options",
    ),
    pytest.param(
        create({"model": "{model}", "file": "{file_id}", "eval": {"reference_file": "file-nope"}}),
        400,
        "invalid_file_id",
        "eval.reference_file",
        id="no-reference-file",
    ),
    pytest.param(create({"model": "{model}", "file": "{file_id}", "seed": -1}), 400, None, "seed", id="bad-seed"),
    pytest.param(
        create({"model": "{model}", "file": "{file_id}", "grader": {"type": "nope"}}),
        400,
        "invalid_grader",
        "grader.type",
        id="bad-grader",
    ),
    pytest.param(
        create(
            {
                "model": "{model}",
                "file": "{file_id}",
                "grader": {
                    "type": "score_model",
                    "name": "j",
                    "model": "ft:x",
                    "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
                },
            }
        ),
        400,
        "model_not_found",
        "grader.model",
        id="grader-unknown-judge",
    ),
    pytest.param(GET, 404, None, "evaluation_id", id="get-unknown"),
    pytest.param(CANCEL, 404, None, "evaluation_id", id="cancel-unknown"),
    pytest.param(REPORT, 404, None, "evaluation_id", id="report-unknown"),
    pytest.param(listing(limit=0), 400, None, "limit", id="list-limit-0"),
]


@pytest.mark.parametrize(("case", "status", "code", "param"), REFUSALS)
def test_refusals_are_rests(api: Api, case: Case, status: int, code: str | None, param: str) -> None:
    assert_refused_as(api, case, {**api.objects, "evaluation_id": "evaljob-nope"}, status, code, param)


def wait_status(api: Api, evaluation_id: str, statuses: set[str]) -> dict[str, Any]:
    return rest_status(api, f"{EV}/{evaluation_id}", statuses)


def test_an_evaluation_made_read_and_cancelled_over_grpc_is_rests(api: Api) -> None:
    o = api.objects  # nothing launches on this server: an evaluation stays queued
    made = api.call(
        "EvaluationService/CreateEvaluation",
        epb.CreateEvaluationRequest(
            model=o["model"], file=o["file_id"], seed=5, eval=epb.ReportOptions(samples=1, max_examples=2)
        ),
    )
    assert made.id.startswith("evaljob-") and (made.object, made.status) == ("tunery.evaluation", "validating_files")
    assert (made.model, made.file, made.base_model, made.seed) == (o["model"], o["file_id"], TINY, 5)
    # The options given, the REST defaults for the rest.
    assert (made.eval.samples, made.eval.max_examples, made.eval.max_new_tokens) == (1, 2, 32)
    assert not made.eval.HasField("reference_file")
    assert not made.HasField("report") and not made.HasField("error") and not made.HasField("finished_at")
    first = {**o, "evaluation_id": made.id}
    wait_status(api, made.id, {"queued"})
    got = assert_same_answer(api, GET, first)
    assert got.id == made.id and got.status == "queued"

    # A second one over REST: the list pages as REST's (newest first, after, limit, has_more).
    second = api.server.http.post(EV, json={"model": o["model"], "file": o["file_id"]}).json()["id"]
    wait_status(api, second, {"queued"})
    page = assert_same_answer(api, listing(limit=1), o)
    assert [e.id for e in page.data] == [second] and page.has_more and page.first_id == page.last_id == second
    page = assert_same_answer(api, listing(limit=5, after=second), o)
    assert [e.id for e in page.data] == [made.id] and not page.has_more
    assert [e.id for e in assert_same_answer(api, listing(), o).data] == [second, made.id]

    # No report before it has run: REST's 404.
    assert assert_same_refusal(api, REPORT, first)["status"] == 404
    # Cancelled over gRPC: REST reads it cancelled; a second cancel is refused as REST refuses it.
    cancelled = api.call("EvaluationService/CancelEvaluation", epb.CancelEvaluationRequest(evaluation_id=made.id))
    assert cancelled.status == "cancelled" and cancelled.HasField("finished_at")
    assert cancelled == to_message(api.server.http.get(f"{EV}/{made.id}").json(), epb.Evaluation)
    assert assert_same_refusal(api, CANCEL, first)["code"] == "evaluation_not_cancellable"
    # An evaluation is not a fine-tuning job over gRPC either.
    jobs = api.call("FineTuningService/ListJobs", jpb.ListJobsRequest(limit=100))
    assert {made.id, second}.isdisjoint(j.id for j in jobs.data)
    with pytest.raises(grpc.RpcError) as caught:
        api.call("FineTuningService/GetJob", jpb.GetJobRequest(job_id=made.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Counted per RPC as every other call.
    metrics = api.server.http.get("/metrics").text
    assert 'tunery_grpc_requests_total{code="OK",rpc="CreateEvaluation"} 1.0' in metrics
    assert 'tunery_grpc_requests_total{code="NOT_FOUND",rpc="GetEvaluationReport"} 1.0' in metrics


def test_another_projects_evaluation_is_not_found_and_a_reader_may_not_write(api: Api) -> None:
    o = api.objects
    made = api.call(
        "EvaluationService/CreateEvaluation", epb.CreateEvaluationRequest(model=o["model"], file=o["file_id"])
    )
    _, keys = project_keys(api, "b", "member", "reader")
    theirs, never = {**o, "evaluation_id": made.id}, {**o, "evaluation_id": "evaljob-" + "x" * 24}
    # Another project's evaluation is one that never existed: NOT_FOUND, never PERMISSION_DENIED.
    assert_not_found_as_unknown(api, (GET, CANCEL, REPORT), theirs, never, keys["member"])
    # Its evaluation of A's model is the model's NOT_FOUND; its list shows none of A's.
    of_theirs = create({"model": "{model}", "file": "{file_id}"})
    assert assert_same_refusal(api, of_theirs, o, key=keys["member"])["code"] == "model_not_found"
    for key in keys.values():
        listed = api.call("EvaluationService/ListEvaluations", epb.ListEvaluationsRequest(), key=key)
        assert list(listed.data) == []
    # A reader may not write: refused before anything is looked up (A's id or one that never existed alike).
    for case, objects in ((CANCEL, theirs), (CANCEL, never), (of_theirs, o)):
        assert assert_same_refusal(api, case, objects, key=keys["reader"])["status"] == 403
    # A's evaluation is untouched.
    got = api.call("EvaluationService/GetEvaluation", epb.GetEvaluationRequest(evaluation_id=made.id))
    assert got.status in ("validating_files", "queued")


@pytest.mark.integration
def test_a_real_evaluation_reads_the_same_over_both_transports(
    tiny_server_factory: Callable[..., RunningServer],
) -> None:
    """A fine-tuned model (one step of the tiny Llama) evaluated by the trainer, created and watched over gRPC: its
    object, its list and its report are REST's JSON for the same id."""
    server = tiny_server_factory()
    c = server.client
    train = c.files.create(file=("train.jsonl", chat_lines(10)), purpose="fine-tune")
    data = c.files.create(file=("eval.jsonl", chat_lines(3, "Answer to {q}")), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=TINY,
        training_file=train.id,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 10}}},
        extra_body={"tunery": {"eval": {"enabled": False}}},  # the job's own reports are not what is tested here
    )
    job = server.wait_job(job.id, DONE, timeout=300)
    assert job.status == "succeeded", (job.error, server.events(job.id))
    with grpc.insecure_channel(server.grpc_address) as channel:
        api = Api(server, channel, {})
        made = api.call(
            "EvaluationService/CreateEvaluation",
            epb.CreateEvaluationRequest(
                model=job.fine_tuned_model,
                file=data.id,
                seed=5,
                eval=json_format.ParseDict(OPTIONS, epb.ReportOptions()),
            ),
        )
        objects = {"evaluation_id": made.id}
        deadline = time.monotonic() + 300
        while (ev := api.call(GET.rpc, GET.request(objects))).status not in DONE:  # watched over gRPC
            assert time.monotonic() < deadline, ev
            time.sleep(0.3)
        assert ev.status == "succeeded", ev
        got = assert_same_answer(api, GET, objects)
        assert got.report.file_id and list(got.result_files) == [got.report.file_id] and got.report.validation_loss > 0
        listed = assert_same_answer(api, listing(), objects)
        assert [e.id for e in listed.data] == [made.id] and listed.data[0] == got
        report = api.call(REPORT.rpc, REPORT.request(objects))
        rest_report = server.http.get(f"{EV}/{made.id}/report").json()
        assert report == to_message({"report": rest_report}, epb.EvaluationReport)
        assert json_format.MessageToDict(report.report) == rest_report  # 3.0 == 3: the Struct's numbers are doubles
        typed = EvalReport.model_validate(json_format.MessageToDict(report.report))
        assert (typed.job_id, typed.model, typed.evaluated_file) == (made.id, job.fine_tuned_model, data.id)
        assert typed.validation is not None and typed.validation.model.examples == 2 and len(typed.samples) == 1


def test_an_evaluation_given_a_grader_over_grpc_is_rests(api: Api) -> None:
    """``grader`` is a Struct both ways: given with CreateEvaluation, read back by GetEvaluation as REST reads it."""
    line = {"messages": [{"role": "user", "content": "Name a fruit."}], "keyword": "apple"}
    rft = api.server.client.files.create(file=("rft.jsonl", json.dumps(line).encode()), purpose="fine-tune")
    api.server.client.files.wait_for_processing(rft.id, poll_interval=0.1, max_wait_seconds=30)
    grader = {
        "type": "string_check",
        "name": "keyword",
        "input": "{{sample.output_text}}",
        "reference": "{{item.keyword}}",
        "operation": "eq",
    }
    request = epb.CreateEvaluationRequest(model=api.objects["model"], file=rft.id)
    request.grader.update(grader)
    made = api.call("EvaluationService/CreateEvaluation", request)
    assert json_format.MessageToDict(made.grader) == grader
    wait_status(api, made.id, {"queued"})  # not validating meanwhile: both transports read the same state
    got = assert_same_answer(api, GET, {**api.objects, "evaluation_id": made.id})
    assert got.grader == made.grader
    # Without one it is unset, as REST's null.
    plain = api.call(
        "EvaluationService/CreateEvaluation",
        epb.CreateEvaluationRequest(model=api.objects["model"], file=api.objects["file_id"]),
    )
    assert not plain.HasField("grader")
