"""The public gRPC API against a running server, through a real grpcio client: the same answers as REST (one table of
calls, two transports), the same errors mapped to status codes with OpenAI's type, code and param in an ErrorInfo,
the same keys and roles, writes and aliases. Streams and operations: tests/api/test_grpc_streams.py; the harness:
tests/grpc_cases.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from api.grpc.calls import REST_TWIN
from api.grpc.convert import to_message
from tests.api.test_graders import CLOSE, EXACT
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY
from tests.grpc_cases import (
    AL,
    GR,
    HI,
    KEY,
    Api,
    Case,
    J,
    assert_same_answer,
    assert_same_refusal,
    error_info,
    project_keys,
    rest,
)
from tunery import sandbox
from tunery.v1 import aliases_pb2 as apb
from tunery.v1 import caller_pb2 as whopb
from tunery.v1 import chat_pb2 as cpb
from tunery.v1 import files_pb2 as fpb
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import graders_pb2 as gpb
from tunery.v1 import models_pb2 as mpb


def grader_call(rpc: str, body: dict[str, Any]) -> Case:
    """A GraderService call and its REST twin, both from one JSON body: the message is built from it by protobuf's
    own JSON mapping (a grader and an item are Structs), not by the server's converter."""
    route = {"GraderService/RunGrader": f"{GR}/run", "GraderService/ValidateGrader": f"{GR}/validate"}[rpc]
    message = {
        "GraderService/RunGrader": gpb.RunGraderRequest,
        "GraderService/ValidateGrader": gpb.ValidateGraderRequest,
    }
    return Case(rpc, lambda o: json_format.ParseDict(body, message[rpc]()), route, body=body)


EQ = {**EXACT, "operation": "eq"}
MULTI = {
    "type": "multi",
    "name": "combined",
    "graders": {"exact": EQ, "close": CLOSE},
    "calculate_output": "0.5 * exact + 0.5 * close ^ 2",
}
JUDGE = {
    "type": "score_model",
    "name": "judge",
    "model": "m",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "Rate {{sample.output_text}}"}]}],
    "range": [0, 1],
    "sampling_params": {"seed": 7},
}
PYTHON = {
    "type": "python",
    "name": "py",
    "source": (
        "def grade(sample, item):\n"
        "    assert isinstance(item['n'], int), 'an integer of the item stays one'\n"
        "    return float(sample['output_json']['answer'] == item['label'])\n"
    ),
}


# Reads that answer the same object over both transports (writes are checked below, on their own objects).
READS = [
    Case("ModelService/ListModels", lambda o: mpb.ListModelsRequest(), "/v1/models"),
    Case("ModelService/GetModel", lambda o: mpb.GetModelRequest(model=o["model"]), "/v1/models/{model}"),
    Case("ModelService/GetModel", lambda o: mpb.GetModelRequest(model=TINY), f"/v1/models/{TINY}"),
    Case("FileService/GetFile", lambda o: fpb.GetFileRequest(file_id=o["file_id"]), "/v1/files/{file_id}"),
    Case("FileService/ListFiles", lambda o: fpb.ListFilesRequest(), "/v1/files"),
    Case(
        "FileService/ListFiles",
        lambda o: fpb.ListFilesRequest(limit=1, order="asc"),
        "/v1/files",
        {"limit": 1, "order": "asc"},
    ),
    Case("FineTuningService/GetJob", lambda o: jpb.GetJobRequest(job_id=o["job_id"]), f"{J}/{{job_id}}"),
    Case("FineTuningService/ListJobs", lambda o: jpb.ListJobsRequest(), J),
    Case(
        "FineTuningService/ListJobs",
        lambda o: jpb.ListJobsRequest(limit=1, metadata={"a": "b"}),
        J,
        {"limit": 1, "metadata[a]": "b"},
    ),
    Case("FineTuningService/ListEvents", lambda o: jpb.ListEventsRequest(job_id=o["job_id"]), f"{J}/{{job_id}}/events"),
    Case(
        "FineTuningService/ListEvents",
        lambda o: jpb.ListEventsRequest(job_id=o["job_id"], limit=2),
        f"{J}/{{job_id}}/events",
        {"limit": 2},
    ),
    Case(
        "FineTuningService/ListCheckpoints",
        lambda o: jpb.ListCheckpointsRequest(job_id=o["job_id"]),
        f"{J}/{{job_id}}/checkpoints",
    ),
    # Graders read nothing of the project: validate answers the grader as Tunery read it.
    grader_call("GraderService/ValidateGrader", {"grader": EQ}),
    grader_call("GraderService/ValidateGrader", {"grader": CLOSE}),
    grader_call("GraderService/ValidateGrader", {"grader": MULTI}),
    grader_call("GraderService/ValidateGrader", {"grader": JUDGE}),
    grader_call("GraderService/ValidateGrader", {"grader": PYTHON}),
    grader_call("GraderService/ValidateGrader", {"grader": {**EQ, "future_field": {"a": [1, None, "x"]}}}),
]


@pytest.mark.parametrize("case", READS, ids=lambda c: c.rpc)
def test_reads_answer_what_rest_answers(api: Api, case: Case) -> None:
    assert_same_answer(api, case, api.objects)


# Grader runs: (the call, the reward REST and gRPC both answer).
RUNS = (
    [
        pytest.param(grader_call("GraderService/RunGrader", {"grader": EQ, "model_sample": s, "item": i}), r, id=name)
        for name, s, i, r in [
            ("string_check", "Paris", {"label": "Paris"}, 1.0),
            ("string_check-miss", "paris", {"label": "Paris"}, 0.0),
            ("string_check-number", "3", {"label": 3}, 1.0),  # {{item.label}} renders 3, as over REST, not 3.0
            ("string_check-no-field", "x", {"other": "y"}, 0.0),  # invalid_variable_error
        ]
    ]
    + [
        pytest.param(grader_call("GraderService/RunGrader", body), reward, id=name)
        for name, body, reward in [
            ("empty-sample", {"grader": {**EXACT, "operation": "ne"}, "model_sample": "", "item": {"label": "a"}}, 1.0),
            ("no-item", {"grader": {**EQ, "reference": "Paris"}, "model_sample": "Paris"}, 1.0),
            ("text_similarity", {"grader": CLOSE, "model_sample": "hallo", "item": {"label": "hello"}}, 0.8),
            ("multi", {"grader": MULTI, "model_sample": "hallo", "item": {"label": "hello"}}, 0.32),
            ("formula-no-value", {"grader": {**MULTI, "calculate_output": "1/exact"}, "model_sample": "x"}, 0.0),
        ]
    ]
    + [
        pytest.param(
            grader_call(
                "GraderService/RunGrader", {"grader": PYTHON, "model_sample": sample, "item": {"n": 1, "label": "P"}}
            ),
            reward,
            id=name,
            marks=pytest.mark.skipif(sandbox.unavailable() is not None, reason=f"no sandbox: {sandbox.unavailable()}"),
        )
        for name, sample, reward in [("python", '{"answer": "P"}', 1.0), ("python-raises", '{"other": 1}', 0.0)]
    ]
)


@pytest.mark.parametrize(("case", "reward"), RUNS)
def test_a_grader_run_answers_what_rest_answers(api: Api, case: Case, reward: float) -> None:
    answer = api.call(case.rpc, case.request(api.objects))
    r = rest(api, case, api.objects)
    assert r.status_code == 200, r.text
    expected = to_message(r.json(), gpb.RunGraderResponse)
    assert answer.reward == pytest.approx(reward) and answer.metadata.execution_time >= 0
    answer.metadata.execution_time = expected.metadata.execution_time = 0  # measured: the one field that differs
    assert answer == expected


MISSING = {"file_id": "file-nope", "job_id": "ftjob-nope", "model": "ft:nope", "name": "nope-bot"}
# Refusals: the same status (mapped), message, type, code and param over both transports.
REFUSALS = [
    Case("ModelService/GetModel", lambda o: mpb.GetModelRequest(model=o["model"]), "/v1/models/{model}"),
    Case("ModelService/DeleteModel", lambda o: mpb.DeleteModelRequest(model=TINY), f"/v1/models/{TINY}"),
    Case("FileService/GetFile", lambda o: fpb.GetFileRequest(file_id=o["file_id"]), "/v1/files/{file_id}"),
    Case("FileService/DeleteFile", lambda o: fpb.DeleteFileRequest(file_id=o["file_id"]), "/v1/files/{file_id}"),
    Case("FileService/ListFiles", lambda o: fpb.ListFilesRequest(limit=0), "/v1/files", {"limit": 0}),
    Case(
        "FileService/GetValidationReport",
        lambda o: fpb.GetValidationReportRequest(file_id=o["file_id"]),
        "/v1/files/{file_id}/validation",
    ),
    Case("FineTuningService/GetJob", lambda o: jpb.GetJobRequest(job_id=o["job_id"]), f"{J}/{{job_id}}"),
    Case("FineTuningService/CancelJob", lambda o: jpb.JobRequest(job_id=o["job_id"]), f"{J}/{{job_id}}/cancel"),
    Case("FineTuningService/PauseJob", lambda o: jpb.JobRequest(job_id=o["job_id"]), f"{J}/{{job_id}}/pause"),
    Case("FineTuningService/ResumeJob", lambda o: jpb.JobRequest(job_id=o["job_id"]), f"{J}/{{job_id}}/resume"),
    Case("FineTuningService/ListEvents", lambda o: jpb.ListEventsRequest(job_id=o["job_id"]), f"{J}/{{job_id}}/events"),
    Case(
        "FineTuningService/ListCheckpoints",
        lambda o: jpb.ListCheckpointsRequest(job_id=o["job_id"]),
        f"{J}/{{job_id}}/checkpoints",
    ),
    Case("FineTuningService/ListJobs", lambda o: jpb.ListJobsRequest(limit=0), J, {"limit": 0}),
    Case(
        "FineTuningService/CreateJob",
        lambda o: jpb.CreateJobRequest(model=TINY, training_file="file-nope"),
        J,
        body={"model": TINY, "training_file": "file-nope"},
    ),
    Case(
        "FineTuningService/CreateJob",
        lambda o: jpb.CreateJobRequest(model="nope", training_file="file-nope"),
        J,
        body={"model": "nope", "training_file": "file-nope"},
    ),
    Case(
        "FineTuningService/CreateJob",
        lambda o: jpb.CreateJobRequest(training_file="file-nope"),
        J,
        body={"training_file": "file-nope"},
    ),
    Case(
        "FineTuningService/CreateJob",
        lambda o: jpb.CreateJobRequest(model=TINY, training_file="f", seed=-1),
        J,
        body={"model": TINY, "training_file": "f", "seed": -1},
    ),
    Case(
        "FineTuningService/DryRun",
        lambda o: jpb.CreateJobRequest(model=TINY, training_file="file-nope"),
        f"{J}/dry_run",
        body={"model": TINY, "training_file": "file-nope"},
    ),
    Case("AliasService/GetAlias", lambda o: apb.GetAliasRequest(name=o["name"]), f"{AL}/{{name}}"),
    Case(
        "AliasService/ListAliasVersions",
        lambda o: apb.ListAliasVersionsRequest(name=o["name"]),
        f"{AL}/{{name}}/history",
    ),
    Case("AliasService/DeleteAlias", lambda o: apb.DeleteAliasRequest(name=o["name"]), f"{AL}/{{name}}"),
    Case("AliasService/RollbackAlias", lambda o: apb.RollbackAliasRequest(name=o["name"]), f"{AL}/{{name}}/rollback"),
    Case(
        "AliasService/UpdateAlias",
        lambda o: apb.UpdateAliasRequest(name=o["name"], model=o["model"]),
        f"{AL}/{{name}}",
        body={"model": "ft:nope"},
    ),
    Case(
        "AliasService/CreateAlias",
        lambda o: apb.CreateAliasRequest(name="Bad Name", model=o["model"]),
        AL,
        body={"name": "Bad Name", "model": "ft:nope"},
    ),
    Case(
        "AliasService/CreateAlias",
        lambda o: apb.CreateAliasRequest(name="ok", model=o["model"]),
        AL,
        body={"name": "ok", "model": "ft:nope"},
    ),
    Case("AliasService/ListAliases", lambda o: apb.ListAliasesRequest(limit=0), AL, {"limit": 0}),
    # Graders: a bad grader, a bad template, a formula error, what Tunery does not run, a bad request.
    grader_call("GraderService/RunGrader", {"grader": {**EXACT, "operation": "contains"}, "model_sample": "x"}),
    grader_call("GraderService/ValidateGrader", {"grader": {"type": "regex", "name": "r"}}),
    grader_call("GraderService/ValidateGrader", {"grader": {**EQ, "input": "{{sample.text}}"}}),
    grader_call(
        "GraderService/RunGrader",
        {
            "grader": {**MULTI, "graders": {"e": {**CLOSE, "reference": "{{x}}"}}, "calculate_output": "e"},
            "model_sample": "x",
        },
    ),
    grader_call("GraderService/ValidateGrader", {"grader": {**MULTI, "calculate_output": "__import__('os')"}}),
    grader_call(
        "GraderService/RunGrader", {"grader": {**MULTI, "calculate_output": "exact.__class__"}, "model_sample": "x"}
    ),
    grader_call("GraderService/ValidateGrader", {"grader": {**PYTHON, "source": "x = 1\n"}}),
    grader_call("GraderService/RunGrader", {"grader": JUDGE, "model_sample": "x"}),
    grader_call("GraderService/RunGrader", {"grader": {**CLOSE, "evaluation_metric": "cosine"}, "model_sample": "x"}),
    grader_call("GraderService/RunGrader", {"grader": EQ}),
    grader_call("GraderService/ValidateGrader", {}),
    # Legacy completions need vLLM: the embedded engine refuses them (tests/serving/test_vllm.py serves them).
    Case(
        "ChatService/CreateCompletion",
        lambda o: cpb.CreateCompletionRequest(model=TINY, prompt=HI, max_tokens=2),
        "/v1/completions",
        body={"model": TINY, "prompt": "Hi", "max_tokens": 2},
    ),
    Case(
        "ChatService/CreateCompletion",
        lambda o: cpb.CreateCompletionRequest(model="nope", prompt=HI),
        "/v1/completions",
        body={"model": "nope", "prompt": "Hi"},
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.rpc)
def test_refusals_map_to_status_codes_with_openai_error(api: Api, case: Case) -> None:
    assert_same_refusal(api, case, MISSING)


def test_every_rpc_has_a_rest_twin_and_every_service_rpc_is_served(api: Api) -> None:
    """Every RPC of every public .proto (all but the trainers' reporting.proto) has its REST twin, and the server
    serves each of its services."""
    import importlib

    protos = sorted(p.stem for p in (Path(__file__).parents[2] / "protos" / "tunery" / "v1").glob("*.proto"))
    public = [importlib.import_module(f"tunery.v1.{name}_pb2") for name in protos if name != "reporting"]
    services = [s for module in public for s in module.DESCRIPTOR.services_by_name.values()]
    assert {f"{s.name}/{m.name}" for s in services for m in s.methods} == set(REST_TWIN)
    listed = set(ProtoReflectionDescriptorDatabase(api.channel).get_services())
    assert {s.full_name for s in services} <= listed


def test_keys_and_roles_are_the_rest_rules(api: Api) -> None:
    job = jpb.GetJobRequest(job_id=api.objects["job_id"])
    for key, code in ((None, None), ("sk-wrong-0123456789abcdef", "invalid_api_key")):
        with pytest.raises(grpc.RpcError) as caught:
            api.call("FineTuningService/GetJob", job, key=key)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).metadata["code"] == (code or "")
    reader = project_keys(api, "p", "reader")[1]["reader"]
    # A reader reads (its project has no jobs: the other project's job is NOT_FOUND, never PERMISSION_DENIED) ...
    assert list(api.call("FineTuningService/ListJobs", jpb.ListJobsRequest(), key=reader).data) == []
    with pytest.raises(grpc.RpcError) as caught:
        api.call("FineTuningService/GetJob", job, key=reader)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # ... grades (a POST that reads and stores nothing, as over REST) ...
    graded = api.call(
        "GraderService/RunGrader",
        json_format.ParseDict({"grader": EQ, "model_sample": "a", "item": {"label": "a"}}, gpb.RunGraderRequest()),
        key=reader,
    )
    assert graded.reward == 1.0
    # ... and may not write: refused before the job is looked up.
    with pytest.raises(grpc.RpcError) as caught:
        api.call("FineTuningService/CancelJob", jpb.JobRequest(job_id=api.objects["job_id"]), key=reader)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_who_the_key_is_as_rest_says(api: Api) -> None:
    """``CallerService/GetCaller`` is ``GET /v1/tunery/me``: the admin key, a reader's key, and no key."""
    project, keys = project_keys(api, "who", "reader")
    reader = keys["reader"]
    answers = {}
    for key in (KEY, reader):
        answers[key] = api.call("CallerService/GetCaller", whopb.GetCallerRequest(), key=key)
        rest = api.server.http.get("/v1/tunery/me", headers={"authorization": f"Bearer {key}"}).json()
        assert answers[key] == to_message(rest, whopb.Caller)
    boss, who = answers[KEY], answers[reader]
    assert (boss.object, boss.role, boss.admin, boss.writes, boss.HasField("key_id")) == (
        "tunery.caller",
        "admin",
        True,
        True,
        False,
    )
    assert (who.role, who.admin, who.writes, who.project_id) == ("reader", False, False, project)
    assert who.key_id and not who.open_access
    with pytest.raises(grpc.RpcError) as caught:
        api.call("CallerService/GetCaller", whopb.GetCallerRequest(), key=None)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_writes_change_what_rest_reads(api: Api) -> None:
    objects = api.objects
    job = api.call(
        "FineTuningService/CreateJob",
        jpb.CreateJobRequest(
            model=TINY,
            training_file=objects["file_id"],
            suffix="grpc",
            seed=7,
            metadata={"team": "search"},
            method=jpb.Method(
                type="supervised",
                supervised=jpb.MethodSection(
                    hyperparameters=jpb.Hyperparameters(
                        n_epochs=json_format.ParseDict(
                            2, __import__("google.protobuf.struct_pb2", fromlist=["Value"]).Value()
                        )
                    )
                ),
            ),
            tunery=jpb.TuneryExtensions(
                training=jpb.TrainingOptions(lr_scheduler_type="cosine", packing=False),
                scheduling=jpb.SchedulingOptions(priority=5),
            ),
        ),
    )
    got = api.server.http.get(f"{J}/{job.id}").json()
    assert job == to_message(got, jpb.FineTuningJob)
    assert got["seed"] == 7 and got["metadata"] == {"team": "search"} and got["user_provided_suffix"] == "grpc"
    assert got["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    assert got["tunery"]["training"]["lr_scheduler_type"] == "cosine" and got["tunery"]["training"]["packing"] is False
    assert got["tunery"]["scheduling"]["priority"] == 5 == job.tunery.scheduling.priority
    cancelled = api.call("FineTuningService/CancelJob", jpb.JobRequest(job_id=job.id))
    assert cancelled.status == "cancelled" == api.server.http.get(f"{J}/{job.id}").json()["status"]
    content = b"".join(
        c.data for c in api.call("FileService/DownloadFile", fpb.DownloadFileRequest(file_id=objects["file_id"]))
    )
    assert content == api.server.http.get(f"/v1/files/{objects['file_id']}/content").content
    deleted = api.call("ModelService/DeleteModel", mpb.DeleteModelRequest(model=objects["model"]))
    assert deleted.deleted and api.server.http.get(f"/v1/models/{objects['model']}").status_code == 404


def test_aliases_over_grpc_are_the_rest_aliases(api: Api) -> None:
    """Every AliasService RPC calls the REST service: what one transport writes, the other reads, field for field."""
    models = api.server.http.get("/v1/models").json()["data"]
    first, second = sorted(m["id"] for m in models if ":ckpt-step-" in m["id"])
    made = api.call("AliasService/CreateAlias", apb.CreateAliasRequest(name="support-bot", model=first, note="v1"))
    assert (made.name, made.model, made.version, made.object) == ("support-bot", first, 1, "tunery.alias")
    assert made == to_message(api.server.http.get(f"{AL}/support-bot").json(), apb.Alias)
    assert api.call("AliasService/GetAlias", apb.GetAliasRequest(name="support-bot")) == made
    moved = api.call("AliasService/UpdateAlias", apb.UpdateAliasRequest(name="support-bot", model=second))
    assert (moved.model, moved.version) == (second, 2)
    back = api.call("AliasService/RollbackAlias", apb.RollbackAliasRequest(name="support-bot", to_version=1))
    assert (back.model, back.version) == (first, 3)
    listed = api.call("AliasService/ListAliases", apb.ListAliasesRequest(limit=5))
    assert listed == to_message(api.server.http.get(AL, params={"limit": 5}).json(), apb.ListAliasesResponse)
    assert [a.name for a in listed.data] == ["support-bot"]
    versions = api.call("AliasService/ListAliasVersions", apb.ListAliasVersionsRequest(name="support-bot"))
    rest_versions = api.server.http.get(f"{AL}/support-bot/history").json()
    assert versions == to_message(rest_versions, apb.ListAliasVersionsResponse)
    assert [(v.version, v.action, v.model) for v in versions.data] == [
        (3, "rolled_back", first),
        (2, "updated", second),
        (1, "created", first),
    ]
    assert not versions.data[2].HasField("previous_model") and versions.data[2].note == "v1"
    assert versions.data[0].actor.type == "api_key" and versions.data[0].actor.id == "bootstrap"
    # The model RPCs resolve it as REST does (the chat through an alias: tests/api/test_aliases.py).
    assert api.call("ModelService/GetModel", mpb.GetModelRequest(model="support-bot")).id == "support-bot"
    gone = api.call("AliasService/DeleteAlias", apb.DeleteAliasRequest(name="support-bot"))
    assert gone.deleted and gone.name == "support-bot"
    assert api.server.http.get(f"{AL}/support-bot").status_code == 404
