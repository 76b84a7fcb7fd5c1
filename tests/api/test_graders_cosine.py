"""The ``text_similarity`` grader's ``cosine`` metric and ``POST /v1/embeddings``, through the official OpenAI SDK
against a real server whose embedding model (``TUNERY_EMBEDDING_MODEL``) is the tiny Llama: the cosine similarity of
the two texts' embeddings (tunery/embeddings.py, the one function the trainer's rewards use too:
tests/trainer/test_grpo_cosine.py); refused with a 400 naming the metric where no embedding model is configured."""

from __future__ import annotations

import base64
import struct
from typing import Any

import openai
import pytest

from tests.api.test_graders import refused, run
from tests.conftest import TINY, RunningServer
from tunery import graders
from tunery.graders import GraderNotRunnable

COSINE = {
    "type": "text_similarity",
    "name": "meaning",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "cosine",
}


@pytest.fixture
def server(tiny_server_factory: Any) -> RunningServer:
    return tiny_server_factory(embedding_model=TINY)  # type: ignore[no-any-return]


def test_cosine_grades_by_the_embedding_model(server: RunningServer) -> None:
    same = run(server, COSINE, "The capital of France is Paris.", {"label": "The capital of France is Paris."})
    assert same["reward"] == pytest.approx(1.0, abs=1e-5)
    assert not any(v for k, v in same["metadata"]["errors"].items() if isinstance(v, bool))
    other = run(server, COSINE, "The capital of France is Paris.", {"label": "zebra 1234 !!"})
    assert -1.0 <= other["reward"] < same["reward"] - 1e-3
    # In a multi grader, beside another metric, each sub-grader's score in sub_rewards.
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {"meaning": COSINE, "exact": {**COSINE, "name": "exact", "evaluation_metric": "fuzzy_match"}},
        "calculate_output": "0.5 * meaning + 0.5 * exact",
    }
    body = run(server, multi, "The capital of France is Paris.", {"label": "zebra 1234 !!"})
    assert body["sub_rewards"]["meaning"] == pytest.approx(other["reward"], abs=1e-5)
    assert body["reward"] == pytest.approx(0.5 * other["reward"] + 0.5 * body["sub_rewards"]["exact"], abs=1e-6)
    # A reference the item lacks: the usual flag, not a failure of the model.
    missing = run(server, COSINE, "x", {"other": 1})
    assert missing["reward"] == 0 and missing["metadata"]["errors"]["invalid_variable_error"]
    # A reinforcement job may grade with it: its grader passes, and the next check (the file) is what refuses here.
    error = refused(lambda: create_job(server, multi))
    assert (error["param"], error["code"]) == ("training_file", "invalid_file_id")
    embeddings_through_the_sdk(server)


def create_job(server: RunningServer, grader: dict[str, Any]) -> Any:
    method = {"type": "reinforcement", "reinforcement": {"grader": grader}}
    return server.client.fine_tuning.jobs.create(model=TINY, training_file="file-" + "x" * 24, method=method)  # type: ignore[arg-type]


def embeddings_through_the_sdk(server: RunningServer) -> None:
    """``POST /v1/embeddings`` on the same server (one server start for both)."""
    texts = ["The capital of France is Paris.", "zebra 1234 !!"]
    floats = server.client.embeddings.create(model=TINY, input=texts, encoding_format="float")
    assert floats.object == "list" and floats.model == TINY
    assert [d.index for d in floats.data] == [0, 1] and all(d.object == "embedding" for d in floats.data)
    vectors = [d.embedding for d in floats.data]
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    # The SDK's default asks for base64 (little-endian float32) and decodes it: the same vectors.
    decoded = server.client.embeddings.create(model=TINY, input=texts)
    for a, b in zip(decoded.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    raw = server.http.post("/v1/embeddings", json={"model": TINY, "input": texts[0], "encoding_format": "base64"})
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(vectors[0], abs=1e-6)
    # The cosine grader's score is the dot product of these embeddings.
    graded = run(server, COSINE, texts[0], {"label": texts[1]})
    assert graded["reward"] == pytest.approx(sum(x * y for x, y in zip(*vectors, strict=True)), abs=1e-5)
    # The model's own width is accepted; any other is refused, as OpenAI refuses it for a model without it.
    width = len(vectors[0])
    assert len(server.client.embeddings.create(model=TINY, input="a", dimensions=width).data[0].embedding) == width
    # Token ids of the model's own tokenizer.
    ids = server.client.embeddings.create(model=TINY, input=[[1, 2, 3], [4]], encoding_format="float")
    assert ids.usage.prompt_tokens == 4 and len(ids.data) == 2
    for body, param in [
        ({"model": TINY, "input": "a", "dimensions": 3}, "dimensions"),
        ({"model": TINY, "input": ""}, "input"),
        ({"model": TINY, "input": []}, "input"),
        ({"model": TINY, "input": [[10**9]]}, "input"),
        ({"model": "nope", "input": "a"}, "model"),
        ({"model": TINY, "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ]:
        resp = server.http.post("/v1/embeddings", json=body)
        assert resp.status_code in (400, 404), (body, resp.text)
        error = resp.json()["error"]
        assert error["param"] == param and set(error) == {"message", "type", "param", "code"}, error


def test_cosine_is_refused_without_an_embedding_model(tiny_server_factory: Any) -> None:
    multi = {"type": "multi", "name": "m", "graders": {"c": COSINE}, "calculate_output": "c"}
    with pytest.raises(GraderNotRunnable) as e:
        graders.check_runnable(graders.parse_grader(multi), "grader")
    assert e.value.param == "grader.graders.c.evaluation_metric" and "TUNERY_EMBEDDING_MODEL" in e.value.message
    graders.check_runnable(graders.parse_grader(multi), "grader", embeddings=True)
    server = tiny_server_factory()
    error = refused(lambda: server.client.fine_tuning.alpha.graders.run(grader=multi, model_sample="x"))  # type: ignore[arg-type]
    assert (error["param"], error["code"]) == ("grader.graders.c.evaluation_metric", "grader_not_supported")
    with pytest.raises(openai.BadRequestError):
        server.client.fine_tuning.alpha.graders.run(grader=COSINE, model_sample="x")  # type: ignore[arg-type]
    # A reinforcement job is refused at creation the same way, naming the metric.
    error = refused(lambda: create_job(server, multi))
    assert error["param"] == "method.reinforcement.grader.graders.c.evaluation_metric"
    assert error["code"] == "grader_not_supported"


def test_embeddings_over_grpc_are_rests(server: RunningServer) -> None:
    """EmbeddingService/CreateEmbedding: REST's vectors (as floats, whatever encoding_format), usage and refusals."""
    import grpc
    from google.protobuf import struct_pb2

    from tunery.v1 import embeddings_pb2 as pb
    from tunery.v1 import embeddings_pb2_grpc as pb_grpc

    texts = ["the cat sat", "a dog ran"]
    rest = server.client.embeddings.create(model=TINY, input=texts, encoding_format="float")
    meta = (("authorization", "Bearer test-key"),)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        value = struct_pb2.Value()
        value.list_value.extend(texts)
        got = stub.CreateEmbedding(
            pb.CreateEmbeddingRequest(model=TINY, input=value, encoding_format="base64"), metadata=meta
        )
        assert (got.object, got.model, [d.index for d in got.data]) == ("list", rest.model, [0, 1])
        for ours, theirs in zip(got.data, rest.data, strict=True):
            assert list(ours.embedding) == pytest.approx(theirs.embedding, abs=1e-6)
        assert (got.usage.prompt_tokens, got.usage.total_tokens) == (rest.usage.prompt_tokens, rest.usage.total_tokens)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateEmbedding(pb.CreateEmbeddingRequest(model="ft:nope", input=value), metadata=meta)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
