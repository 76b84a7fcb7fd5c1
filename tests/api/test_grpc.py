"""The public gRPC API against a running server, through a real grpcio client: the same answers as REST (one table of
calls, two transports), the same errors mapped to status codes with OpenAI's type, code and param in an ErrorInfo,
the same keys and roles, live event watching across a reconnect, health and reflection."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from api.grpc.calls import REST_TWIN
from api.grpc.convert import to_message
from api.grpc.errors import GRPC_CODE
from tests import fuzzing
from tests.api.test_graders import CLOSE, EXACT
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, RunningServer, chat_lines
from tunery import sandbox
from tunery.db.ops import add_event
from tunery.v1 import aliases_pb2 as apb
from tunery.v1 import (
    aliases_pb2_grpc,
    chat_pb2_grpc,
    embeddings_pb2_grpc,
    evaluations_pb2_grpc,
    exports_pb2_grpc,
    files_pb2_grpc,
    fine_tuning_pb2_grpc,
    graders_pb2_grpc,
    models_pb2_grpc,
    secrets_pb2_grpc,
    webhooks_pb2_grpc,
)
from tunery.v1 import chat_pb2 as cpb
from tunery.v1 import files_pb2 as fpb
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import graders_pb2 as gpb
from tunery.v1 import models_pb2 as mpb

KEY = fuzzing.API_KEY
HI = struct_pb2.Value(string_value="Hi")
J = "/v1/fine_tuning/jobs"
AL = "/v1/tunery/aliases"
GR = "/v1/fine_tuning/alpha/graders"


@dataclass
class Api:
    server: RunningServer
    channel: grpc.Channel
    objects: dict[str, str]

    def stub(self, service: str) -> Any:
        stubs = {
            "ChatService": chat_pb2_grpc.ChatServiceStub,
            "FileService": files_pb2_grpc.FileServiceStub,
            "FineTuningService": fine_tuning_pb2_grpc.FineTuningServiceStub,
            "ModelService": models_pb2_grpc.ModelServiceStub,
            "AliasService": aliases_pb2_grpc.AliasServiceStub,
            "GraderService": graders_pb2_grpc.GraderServiceStub,
            "EvaluationService": evaluations_pb2_grpc.EvaluationServiceStub,
            "ExportService": exports_pb2_grpc.ExportServiceStub,
            "WebhookService": webhooks_pb2_grpc.WebhookServiceStub,
            "SecretService": secrets_pb2_grpc.SecretServiceStub,
            "EmbeddingService": embeddings_pb2_grpc.EmbeddingServiceStub,
        }
        return stubs[service](self.channel)

    def call(self, rpc: str, request: Message, key: str | None = KEY, **kwargs: Any) -> Any:
        service, method = rpc.split("/")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return getattr(self.stub(service), method)(request, metadata=metadata, timeout=60, **kwargs)


@pytest.fixture
def api(tiny_server_factory: Callable[..., RunningServer]) -> Iterator[Api]:
    server = fuzzing.authorised(tiny_server_factory(api_keys=[KEY], max_concurrent_runs=0))
    objects = fuzzing.seed_objects(server)  # a file, an upload, a queued job with two checkpoints and their models
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield Api(server, channel, objects)


@dataclass(frozen=True)
class Case:
    """One call over both transports: the RPC and its request, and the REST request that is its twin (its path and
    its body, when one is a function, filled with the same objects as the request)."""

    rpc: str
    request: Callable[[dict[str, str]], Message]
    path: str
    query: dict[str, Any] | None = None
    body: dict[str, Any] | Callable[[dict[str, str]], dict[str, Any]] | None = None


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


def rest(api: Api, case: Case, objects: dict[str, str], key: str | None = None) -> Any:
    method, _ = REST_TWIN[case.rpc]
    body = case.body(objects) if callable(case.body) else case.body
    headers = {"authorization": f"Bearer {key}"} if key else None
    return api.server.http.request(method, case.path.format(**objects), params=case.query, json=body, headers=headers)


def assert_same_answer(api: Api, case: Case, objects: dict[str, str]) -> Any:
    """The gRPC answer is the REST object converted by the one rule, field for field; it is returned."""
    answer = api.call(case.rpc, case.request(objects))
    r = rest(api, case, objects)
    assert r.status_code == 200, r.text
    assert answer == to_message(r.json(), type(answer))
    return answer


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


def error_info(e: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


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


def assert_same_refusal(api: Api, case: Case, objects: dict[str, str], key: str = KEY) -> dict[str, Any]:
    """The same status (mapped), message, type, code and param over both transports; REST's error is returned."""
    r = rest(api, case, objects, key)
    assert r.status_code >= 400, r.text
    with pytest.raises(grpc.RpcError) as caught:
        api.call(case.rpc, case.request(objects), key=key)
    e = caught.value
    error: dict[str, Any] = r.json()["error"]
    assert e.code() == GRPC_CODE[r.status_code]
    assert e.details() == error["message"]
    info = error_info(e)
    assert info.domain == "tunery" and info.metadata["type"] == error["type"]
    assert info.metadata["code"] == (error["code"] or "") and info.metadata["param"] == (error["param"] or "")
    assert dict(e.trailing_metadata() or ())["x-request-id"].startswith("req_")
    return {**error, "status": r.status_code}


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
    admin = {"authorization": f"Bearer {KEY}"}
    project = api.server.http.post("/v1/organization/projects", json={"name": "p"}, headers=admin).json()["id"]
    made = api.server.http.post(
        f"/v1/organization/projects/{project}/service_accounts", json={"name": "r", "role": "reader"}, headers=admin
    )
    reader = made.json()["api_key"]["value"]
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


def test_download_archive_streams_the_bytes_rest_serves_and_its_refusals(api: Api) -> None:
    model, job_id = api.objects["model"], api.objects["job_id"]
    archive = f"/v1/tunery/models/{model}/archive"

    def download(name: str) -> bytes:
        return b"".join(
            c.data for c in api.call("ModelService/DownloadArchive", mpb.DownloadArchiveRequest(model=name))
        )

    # Refused as REST refuses: an unknown model, a base model, a model without its manifest (the seeded one).
    for name, path in (
        ("ft:nope", "/v1/tunery/models/ft:nope/archive"),
        (TINY, f"/v1/tunery/models/{TINY}/archive"),
        (model, archive),
    ):
        r = api.server.http.get(path)
        error = r.json()["error"]
        with pytest.raises(grpc.RpcError) as caught:
            download(name)
        assert caught.value.code() == GRPC_CODE[r.status_code]
        assert caught.value.details() == error["message"] and error_info(caught.value).metadata["code"] == error["code"]
    assert error["code"] == "model_incomplete"
    # Complete (a file over two messages, and its manifest): the same bytes as REST's, a .tar.gz of them.
    weights = random.Random(0).randbytes(3 << 19)  # 1.5 MiB that do not compress: over two messages
    store, prefix = api.server.app.state.ctx.store, f"jobs/{job_id}/checkpoints/step-1"
    store.put_bytes(f"{prefix}/adapter_model.safetensors", weights)
    manifest = {"files": {"adapter_model.safetensors": hashlib.sha256(weights).hexdigest()}}
    store.put_bytes(f"{prefix}/tunery_manifest.json", json.dumps(manifest).encode())
    chunks = list(api.call("ModelService/DownloadArchive", mpb.DownloadArchiveRequest(model=model)))
    got = b"".join(c.data for c in chunks)
    assert len(chunks) >= 2 and max(len(c.data) for c in chunks) <= 1 << 20
    assert got == api.server.http.get(archive).content
    with tarfile.open(fileobj=io.BytesIO(got), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/adapter_model.safetensors"))
        assert tar.extractfile(member).read() == weights  # type: ignore[union-attr]


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


def watched(api: Api, rpc: str, request: jpb.WatchEventsRequest) -> Iterator[jpb.FineTuningJobEvent]:
    """The events a watch sends, one by one: WatchEvents sends each in its own message, WatchEventPages sends pages
    (each a ListEventsResponse whose first_id and last_id are its own first and last event)."""
    stream = api.call(f"FineTuningService/{rpc}", request)
    try:
        for message in stream:
            if rpc == "WatchEvents":
                yield message
                continue
            assert message.object == "list" and message.data, "a page is never empty"
            assert (message.first_id, message.last_id) == (message.data[0].id, message.data[-1].id)
            yield from message.data
    finally:
        stream.cancel()  # the client leaves (a no-op once the stream has ended)


@pytest.mark.parametrize("rpc", ["WatchEvents", "WatchEventPages"])
def test_watch_events_replays_from_a_cursor_follows_live_and_ends_with_the_job(api: Api, rpc: str) -> None:
    job_id = api.objects["job_id"]
    stream = watched(api, rpc, jpb.WatchEventsRequest(job_id=job_id))
    first = next(stream)
    stream.close()  # the client leaves
    # Reconnect after the last event seen: the rest, in order, then live ones until the job ends.
    stream = watched(api, rpc, jpb.WatchEventsRequest(job_id=job_id, after=first.id))
    seen = [first]
    rest_events = api.server.http.get(f"{J}/{job_id}/events").json()["data"]
    for _ in range(len(rest_events) - 1):
        seen.append(next(stream))
    assert [e.id for e in seen] == [e["id"] for e in reversed(rest_events)]
    assert api.server.http.post(f"{J}/{job_id}/cancel").status_code == 200
    live = list(stream)  # ends by itself once the job is cancelled
    assert live and live[-1].message == api.server.http.get(f"{J}/{job_id}/events").json()["data"][0]["message"]
    ids = [e.id for e in seen + live]
    assert len(ids) == len(set(ids))
    assert ids == [
        e["id"] for e in reversed(api.server.http.get(f"{J}/{job_id}/events", params={"limit": 100}).json()["data"])
    ]
    metrics = api.server.http.get("/metrics").text
    # The stream the client left ended there (its wait cancelled), and was counted so; the other ended with the job.
    assert f'tunery_grpc_requests_total{{code="CANCELLED",rpc="{rpc}"}} 1.0' in metrics
    assert f'tunery_grpc_requests_total{{code="OK",rpc="{rpc}"}} 1.0' in metrics


def test_a_replay_in_pages_sends_a_long_history_in_few_messages(api: Api) -> None:
    """A watch in pages replays a job's stored events 200 to a message (has_more while more are stored), where
    WatchEvents sends one message each: same events, same order."""
    job_id = api.objects["job_id"]
    with api.server.app.state.ctx.db.session() as s:
        for i in range(450):
            add_event(s, job_id, f"step {i}", type="metrics", data={"step": i})
    assert api.server.http.post(f"{J}/{job_id}/cancel").status_code == 200  # ended: the replay is the whole stream
    stored = [
        e["id"] for e in reversed(api.server.http.get(f"{J}/{job_id}/events", params={"limit": 1000}).json()["data"])
    ]
    assert len(stored) > 450
    pages = list(api.call("FineTuningService/WatchEventPages", jpb.WatchEventsRequest(job_id=job_id)))
    assert [len(p.data) for p in pages] == [200, 200, len(stored) - 400]
    assert [p.has_more for p in pages] == [True, True, False]
    assert [e.id for p in pages for e in p.data] == stored
    one_by_one = list(api.call("FineTuningService/WatchEvents", jpb.WatchEventsRequest(job_id=job_id)))
    assert [e.id for e in one_by_one] == stored
    # From a cursor in the middle of a page: the rest, in pages.
    pages = list(api.call("FineTuningService/WatchEventPages", jpb.WatchEventsRequest(job_id=job_id, after=stored[9])))
    assert [e.id for p in pages for e in p.data] == stored[10:] and len(pages) == 3


def test_health_and_reflection(api: Api) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)
    public = (
        "tunery.v1.FineTuningService",
        "tunery.v1.FileService",
        "tunery.v1.ModelService",
        "tunery.v1.AliasService",
        "tunery.v1.ChatService",
        "tunery.v1.GraderService",
        "tunery.v1.EvaluationService",
        "tunery.v1.ExportService",
    )
    for service in ("", *public):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(api.channel)
    services = set(db.get_services())
    assert set(public) <= services
    assert "tunery.v1.TrainerReporting" not in services  # the trainers' channel is not the public API


def upload_messages(
    data: bytes, purpose: str = "fine-tune", filename: str = "t.jsonl"
) -> Iterator[fpb.UploadFileRequest]:
    yield fpb.UploadFileRequest(header=fpb.UploadFileHeader(purpose=purpose, filename=filename))
    for i in range(0, len(data), 1000):
        yield fpb.UploadFileRequest(data=data[i : i + 1000])


def test_upload_streams_a_file_that_rest_then_serves(api: Api) -> None:
    data = chat_lines(30)
    made = api.call("FileService/UploadFile", upload_messages(data))
    assert made.bytes == len(data) and made.filename == "t.jsonl" and made.purpose == "fine-tune"
    assert made == to_message(api.server.http.get(f"/v1/files/{made.id}").json(), fpb.File)
    assert api.server.http.get(f"/v1/files/{made.id}/content").content == data
    # validated by the scheduler as a REST upload is
    deadline = time.monotonic() + 60
    while api.call("FileService/GetFile", fpb.GetFileRequest(file_id=made.id)).status == "uploaded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    report = api.call("FileService/GetValidationReport", fpb.GetValidationReportRequest(file_id=made.id))
    rest_report = api.server.http.get(f"/v1/files/{made.id}/validation").json()
    assert report.status == rest_report["status"] == "processed"
    sections = {k: v for k, v in rest_report.items() if k not in ("object", "file_id", "status")}
    assert sections and json_format.MessageToDict(report.report) == sections


@pytest.mark.parametrize(
    ("messages", "code", "param"),
    [
        (lambda: iter([]), grpc.StatusCode.INVALID_ARGUMENT, "header"),
        (lambda: iter([fpb.UploadFileRequest(data=b"x")]), grpc.StatusCode.INVALID_ARGUMENT, "header"),
        (lambda: upload_messages(b"x", purpose="nope"), grpc.StatusCode.INVALID_ARGUMENT, "purpose"),
        (lambda: upload_messages(b"", filename="e.jsonl"), grpc.StatusCode.INVALID_ARGUMENT, "file"),
        (lambda: upload_messages(b"x", filename="t.txt"), grpc.StatusCode.INVALID_ARGUMENT, "file"),
        (
            lambda: iter([*upload_messages(b"{}\n"), fpb.UploadFileRequest(header=fpb.UploadFileHeader())]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "header",
        ),
        (lambda: upload_messages(b"x" * 5000), grpc.StatusCode.RESOURCE_EXHAUSTED, "file"),
    ],
    ids=["empty", "no-header", "purpose", "empty-file", "not-jsonl", "two-headers", "too-large"],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    tiny_server_factory: Callable[..., RunningServer],
    messages: Callable[[], Iterator[Any]],
    code: grpc.StatusCode,
    param: str,
) -> None:
    server = fuzzing.authorised(tiny_server_factory(api_keys=[KEY], max_file_bytes=4096))
    with grpc.insecure_channel(server.grpc_address) as channel:
        api = Api(server, channel, {})
        with pytest.raises(grpc.RpcError) as caught:
            api.call("FileService/UploadFile", messages())
    assert caught.value.code() == code, caught.value.details()
    assert error_info(caught.value).metadata["param"] == param
    assert server.http.get("/v1/files").json()["data"] == []
    objects = server.app.state.ctx.store
    assert objects.list("files/") == []


def test_chat_answers_what_rest_answers_whole_and_streamed(api: Api) -> None:
    messages = [{"role": "user", "content": "Say something."}]
    request = cpb.CreateChatCompletionRequest(
        model=TINY,
        messages=[cpb.ChatMessage(role="user", content=struct_pb2.Value(string_value="Say something."))],
        max_tokens=6,
        temperature=0,
        stream_options=None,
    )
    answer = api.call("ChatService/CreateChatCompletion", request)
    rest_answer = api.server.http.post(
        "/v1/chat/completions", json={"model": TINY, "messages": messages, "max_tokens": 6, "temperature": 0}
    ).json()
    assert answer.object == "chat.completion" and answer.model == TINY
    assert answer.choices[0].message.content == rest_answer["choices"][0]["message"]["content"]
    assert answer.usage.completion_tokens == rest_answer["usage"]["completion_tokens"] > 0
    request.stream_options.include_usage = True
    chunks = list(api.call("ChatService/StreamChatCompletion", request))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    legacy = cpb.CreateCompletionRequest(model=TINY, prompt=HI, max_tokens=2)
    with pytest.raises(grpc.RpcError) as caught:  # a stream is refused as REST refuses it, before its first part
        list(api.call("ChatService/StreamCompletion", legacy))
    refused = api.server.http.post("/v1/completions", json={"model": TINY, "prompt": "Hi", "stream": True}).json()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == refused["error"]["message"]


def test_rate_limits_count_grpc_calls_too(tiny_server_factory: Callable[..., RunningServer]) -> None:
    server = fuzzing.authorised(tiny_server_factory(api_keys=[KEY], project_requests_per_minute=3))
    with grpc.insecure_channel(server.grpc_address) as channel:
        api = Api(server, channel, {})
        for _ in range(2):
            api.call("ModelService/ListModels", mpb.ListModelsRequest())
        assert server.http.get("/v1/models").status_code == 200  # one bucket for both transports
        with pytest.raises(grpc.RpcError) as caught:
            api.call("ModelService/ListModels", mpb.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.metadata["code"] == "rate_limit_exceeded" and int(info.metadata["retry_after"]) >= 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tunery.test_grpc_tls import pki as make_pki

    return make_pki.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined]


def test_tls_and_mutual_tls(tiny_server_factory: Callable[..., RunningServer], pki: Path) -> None:
    server = tiny_server_factory(
        api_grpc_tls_cert=str(pki / "server.crt"),
        api_grpc_tls_key=str(pki / "server.key"),
        api_grpc_tls_client_ca=str(pki / "client-ca.crt"),
    )
    ca = (pki / "server-ca.crt").read_bytes()

    def list_models(credentials: grpc.ChannelCredentials | None) -> Any:
        channel = (
            grpc.secure_channel(server.grpc_address, credentials)
            if credentials
            else grpc.insecure_channel(server.grpc_address)
        )
        with channel:
            return models_pb2_grpc.ModelServiceStub(channel).ListModels(mpb.ListModelsRequest(), timeout=10)

    trusted = grpc.ssl_channel_credentials(ca, (pki / "trainer.key").read_bytes(), (pki / "trainer.crt").read_bytes())
    assert TINY in {m.id for m in list_models(trusted).data}
    stranger = grpc.ssl_channel_credentials(
        ca, (pki / "stranger.key").read_bytes(), (pki / "stranger.crt").read_bytes()
    )
    for credentials in (None, grpc.ssl_channel_credentials(ca), stranger):  # plaintext, no certificate, untrusted
        with pytest.raises(grpc.RpcError) as caught:
            list_models(credentials)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_without_its_key_stops_the_start(
    tiny_server_factory: Callable[..., RunningServer], pki: Path
) -> None:
    with pytest.raises(ValueError, match="TUNERY_API_GRPC_TLS_CERT is set without TUNERY_API_GRPC_TLS_KEY"):
        tiny_server_factory(api_grpc_tls_cert=str(pki / "server.crt"))


@pytest.mark.parametrize(
    "rpc",
    [
        "FineTuningService/GetJob",
        "FineTuningService/WatchEvents",
        "FineTuningService/WatchEventPages",
        "FileService/UploadFile",
        "ChatService/StreamChatCompletion",
    ],
)
def test_a_message_that_does_not_parse_is_invalid_argument(api: Api, rpc: str) -> None:
    """Corrupt bytes on the wire: INVALID_ARGUMENT with OpenAI's error, never grpcio's UNKNOWN or INTERNAL."""
    garbage = b"\xff\xff\xff\xff\x0f not a message"
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    path, auth = f"/tunery.v1.{rpc}", (("authorization", f"Bearer {KEY}"),)
    with pytest.raises(grpc.RpcError) as caught:
        if rpc == "FileService/UploadFile":
            api.channel.stream_unary(path, **raw)(iter([garbage]), metadata=auth, timeout=30)
        elif "Watch" in rpc or "Stream" in rpc:
            list(api.channel.unary_stream(path, **raw)(garbage, metadata=auth, timeout=30))
        else:
            api.channel.unary_unary(path, **raw)(garbage, metadata=auth, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert error_info(caught.value).metadata["code"] == "invalid_message"
