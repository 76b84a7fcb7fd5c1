"""The public gRPC API's test harness, shared by the gRPC suites (tests/api/test_grpc*.py): a running server with
its channel and seeded objects (:class:`Api`, :func:`grpc_api`), and a call over both transports (:class:`Case`)
checked to answer, or refuse, as its REST twin does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    """A server with keys, its gRPC channel and seeded objects (each suite's ``api`` fixture yields from it)."""
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
