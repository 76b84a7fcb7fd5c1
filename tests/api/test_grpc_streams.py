"""The public gRPC API's streams and operations against a running server, through a real grpcio client: a model
archive and a file streamed down and up, a job's events watched live across a reconnect (one by one and in pages),
chat whole and streamed, health and reflection, rate limits, TLS and mutual TLS, and messages that do not parse."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from api.grpc.convert import to_message
from api.grpc.errors import GRPC_CODE
from tests import fuzzing
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, RunningServer, chat_lines
from tests.grpc_cases import (
    HI,
    KEY,
    Api,
    J,
    error_info,
)
from tunery.db.ops import add_event
from tunery.v1 import chat_pb2 as cpb
from tunery.v1 import files_pb2 as fpb
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import models_pb2 as mpb
from tunery.v1 import (
    models_pb2_grpc,
)


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
