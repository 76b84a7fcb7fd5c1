"""The public gRPC API's test harness, shared by the gRPC suites (tests/api/test_grpc*.py): a running server with
its channel and seeded objects (:class:`Api`, :func:`grpc_api`), and a call over both transports (:class:`Case`)
checked to answer, or refuse, as its REST twin does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from api.grpc.calls import REST_TWIN
from api.grpc.convert import to_message
from api.grpc.errors import GRPC_CODE
from tests import fuzzing
from tests.conftest import RunningServer
from tunery.v1 import (
    aliases_pb2_grpc,
    caller_pb2_grpc,
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
            "CallerService": caller_pb2_grpc.CallerServiceStub,
        }
        return stubs[service](self.channel)

    def call(self, rpc: str, request: Message, key: str | None = KEY, **kwargs: Any) -> Any:
        service, method = rpc.split("/")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return getattr(self.stub(service), method)(request, metadata=metadata, timeout=60, **kwargs)


def grpc_api(tiny_server_factory: Callable[..., RunningServer]) -> Iterator[Api]:
    """A server with keys, its gRPC channel and seeded objects (the ``api`` fixture, and suites that need more)."""
    server = fuzzing.authorised(tiny_server_factory(api_keys=[KEY], max_concurrent_runs=0))
    objects = fuzzing.seed_objects(server)  # a file, an upload, a queued job with two checkpoints and their models
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield Api(server, channel, objects)


@pytest.fixture
def api(tiny_server_factory: Callable[..., RunningServer]) -> Iterator[Api]:
    """:func:`grpc_api`'s server (a key; nothing launches) with its seeded objects (a file, an upload, a queued job,
    its checkpoint models), and a channel to it. A suite takes it by importing it."""
    yield from grpc_api(tiny_server_factory)


def project_keys(api: Api, name: str, *roles: str) -> tuple[str, dict[str, str]]:
    """A new project of the organization, made with the admin key, and a service account's key in it for each of
    ``roles``: (the project's id, role -> the key)."""
    admin = {"authorization": f"Bearer {KEY}"}
    http = api.server.http
    made = http.post("/v1/organization/projects", json={"name": name}, headers=admin)
    assert made.status_code == 200, made.text
    project: str = made.json()["id"]
    keys = {}
    for role in roles:
        account = http.post(
            f"/v1/organization/projects/{project}/service_accounts", json={"name": role, "role": role}, headers=admin
        )
        assert account.status_code == 200, account.text
        keys[role] = account.json()["api_key"]["value"]
    return project, keys


def rest_status(api: Api, path: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
    """The REST object at ``path`` once its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, Any] = api.server.http.get(path).json()
        if got["status"] in statuses:
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


@dataclass(frozen=True)
class Case:
    """One call over both transports: the RPC and its request, and the REST request that is its twin (its path and
    its body, when one is a function, filled with the same objects as the request)."""

    rpc: str
    request: Callable[[dict[str, str]], Message]
    path: str
    query: dict[str, Any] | None = None
    body: dict[str, Any] | Callable[[dict[str, str]], dict[str, Any]] | None = None


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


def error_info(e: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


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


def assert_refused_as(
    api: Api, case: Case, objects: dict[str, str], status: int, code: str | None, param: str | None
) -> None:
    """:func:`assert_same_refusal`, and that refusal's REST status and param, and its code unless None."""
    error = assert_same_refusal(api, case, objects)
    assert (error["status"], error["param"]) == (status, param), error
    assert code is None or error["code"] == code, error


def assert_not_found_as_unknown(
    api: Api, cases: Iterable[Case], theirs: dict[str, str], never: dict[str, str], key: str
) -> None:
    """Another project's object (``theirs``) is one that never existed (``never``) to ``key``: NOT_FOUND with the
    same code and param, never PERMISSION_DENIED."""
    for case in cases:
        refused = assert_same_refusal(api, case, theirs, key=key)
        unknown = assert_same_refusal(api, case, never, key=key)
        assert refused["status"] == 404, case.rpc
        assert (refused["code"], refused["param"]) == (unknown["code"], unknown["param"]), case.rpc
