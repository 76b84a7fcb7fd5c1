"""Sampling options of ``/v1/chat/completions`` as OpenAI has them: ``top_p=0`` (greedy), ``frequency_penalty``,
``presence_penalty`` and ``logit_bias`` honoured by the embedded engine (a LogitsProcessor with OpenAI's formula)
and forwarded to vLLM, and OpenAI's 400s for what it refuses. The model-running tests use the tiny Llama (the demo
model's tokenizer, random weights) through the official SDK, a few short greedy generations each."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from serving.errors import EngineError
from serving.sampling import LOGIT_BIAS_RANGE, MAX_LOGIT_BIAS, MAX_STOP, PENALTY_RANGE, TOP_P_RANGE, SamplingParams
from tests.conftest import TINY
from tests.schema import SPEC, validate

HI = [{"role": "user", "content": "hi"}]
# A prompt whose greedy reply from the tiny model is one token over and over (checked: the penalty test needs it).
REPEATS = [{"role": "user", "content": "Hello! Who are you?"}]
N = 16


# ---- the LogitsProcessor -------------------------------------------------------------------------------------
def test_penalties_processor_matches_openai_formula() -> None:
    import torch

    from serving.penalties import OpenAIPenaltiesLogitsProcessor

    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    # Two prompt tokens (never counted), then what was generated: row 0 made token 0 twice and token 2 once.
    input_ids = torch.tensor([[4, 4, 0, 2, 0], [1, 1, 3, 3, 3]])
    proc = OpenAIPenaltiesLogitsProcessor(0.5, 1.0, {1: -100.0, 3: 2.5}, prompt_len=2)
    got = proc(input_ids, scores)
    # logits[j] -= count[j] * 0.5 + (count[j] > 0) * 1.0; logits[j] += bias[j]
    expected = torch.tensor(
        [
            [1.0 - (2 * 0.5 + 1.0), 2.0 - 100.0, 3.0 - (1 * 0.5 + 1.0), 4.0 + 2.5, 5.0],
            [0.5, 0.5 - 100.0, 0.5, 0.5 - (3 * 0.5 + 1.0) + 2.5, 0.5],
        ]
    )
    torch.testing.assert_close(got, expected)
    assert scores[0, 0] == 1.0  # the input is left as it was
    # Negative penalties reward repeats; half-precision scores come back as float32.
    neg = OpenAIPenaltiesLogitsProcessor(-2.0, -1.0)(torch.tensor([[3, 3]]), torch.zeros(1, 5, dtype=torch.bfloat16))
    assert neg.dtype == torch.float32
    torch.testing.assert_close(neg, torch.tensor([[0.0, 0.0, 0.0, 2 * 2.0 + 1.0, 0.0]]))
    # Nothing generated yet: only the bias applies.
    first = OpenAIPenaltiesLogitsProcessor(2.0, 2.0, {0: 1.0}, prompt_len=2)(torch.tensor([[1, 2]]), torch.zeros(1, 3))
    torch.testing.assert_close(first, torch.tensor([[1.0, 0.0, 0.0]]))


# ---- the rule ------------------------------------------------------------------------------------------------
def _spec_property(schema: str, name: str) -> dict[str, Any]:
    """A request property of OpenAI's published spec, wherever in the schema's allOf it is declared."""
    schemas = yaml.safe_load(SPEC.read_text())["components"]["schemas"]

    def find(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if "$ref" in node:
                return find(schemas[node["$ref"].rsplit("/", 1)[1]])
            if name in node.get("properties", {}):
                prop: dict[str, Any] = node["properties"][name]
                return next((p for p in prop.get("anyOf", []) if "minimum" in p or "maxItems" in p), prop)
            for value in node.values():
                if isinstance(value, dict | list) and (found := find(value)) is not None:
                    return found
        elif isinstance(node, list):
            for value in node:
                if (found := find(value)) is not None:
                    return found
        return None

    found = find(schemas[schema])
    assert found is not None, (schema, name)
    return found


def test_bounds_are_openais() -> None:
    for name, bounds in (("top_p", TOP_P_RANGE), ("frequency_penalty", PENALTY_RANGE)):
        prop = _spec_property("CreateChatCompletionRequest", name)
        assert (prop["minimum"], prop["maximum"]) == bounds, name
    prop = _spec_property("CreateChatCompletionRequest", "presence_penalty")
    assert (prop["minimum"], prop["maximum"]) == PENALTY_RANGE
    temperature = _spec_property("CreateChatCompletionRequest", "temperature")
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    assert LOGIT_BIAS_RANGE == (-100.0, 100.0) and MAX_LOGIT_BIAS == 300 and MAX_STOP == 4


def test_from_request_parses_and_refuses() -> None:
    params = SamplingParams.from_request(
        {"top_p": 0, "frequency_penalty": 1.5, "presence_penalty": -2, "logit_bias": {"42": -100, "7": 3.5}}
    )
    assert params.greedy and params.adjusts_logits and params.logit_bias == {42: -100, 7: 3.5}
    assert not SamplingParams.from_request({"temperature": None, "top_p": None}).greedy  # null: the default
    assert not SamplingParams.from_request({}).adjusts_logits
    assert SamplingParams.from_request({"max_completion_tokens": 5, "max_tokens": 9}).max_tokens == 5
    # The engine checks values built in code too, and token ids against its vocabulary.
    for bad in ({-1: 1.0}, {"7": 1.0}, {7: float("nan")}, {7: 100.5}):
        with pytest.raises(EngineError) as e:
            SamplingParams(logit_bias=bad).check()  # type: ignore[arg-type]
        assert e.value.param == "logit_bias", bad
    SamplingParams(logit_bias={9: -100}).check(vocab_size=10)
    with pytest.raises(EngineError, match="outside the model's vocabulary"):
        SamplingParams(logit_bias={10: -100}).check(vocab_size=10)


# ---- through the SDK on the embedded engine ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def chat(server: Any, max_tokens: int = N, **kw: Any) -> str:
    r = server.client.chat.completions.create(model=TINY, messages=REPEATS, temperature=0, max_tokens=max_tokens, **kw)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == max_tokens, r
    return str(r.choices[0].message.content)


def test_top_p_zero_is_greedy(server: Any) -> None:
    plain = chat(server)
    # top_p=0 at the default temperature (1) is the smallest nucleus: the most likely token, every time.
    r = server.client.chat.completions.create(model=TINY, messages=REPEATS, top_p=0, max_tokens=N)
    assert r.choices[0].message.content == plain
    assert chat(server, top_p=0) == plain


def test_logit_bias_and_penalties_are_honoured(server: Any, tokenizer: Any) -> None:
    # The greedy reply is one token over and over (a newline: the tiny model's favourite).
    one = chat(server, max_tokens=1)
    (first,) = tokenizer(one, add_special_tokens=False)["input_ids"]
    plain = chat(server)
    assert plain == one * N, f"the greedy reply should repeat its first token: {plain!r}"

    # A bias of 100 makes a token win every step; -100 keeps one out.
    word = " zebra"
    (zebra,) = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert chat(server, logit_bias={str(zebra): 100}) == word * N
    banned = chat(server, logit_bias={str(first): -100})
    assert one not in banned and len(banned) > 0
    # Even -2 on that token changes the first one chosen: the margins are that thin.
    assert chat(server, max_tokens=1, logit_bias={str(first): -2}) != one

    # Zero penalties change nothing. Penalties of 2 leave the first token alone (the prompt, whose chat template is
    # full of newlines, is not counted), then keep it from coming back.
    assert chat(server, frequency_penalty=0, presence_penalty=0) == plain
    for kw in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        penalised = chat(server, **kw)
        assert penalised.startswith(one) and penalised.count(one) == 1, (kw, penalised)
    # A negative penalty rewards the repeat further: still the greedy reply.
    assert chat(server, presence_penalty=-2.0, frequency_penalty=-2.0) == plain
    # A streamed reply samples the same way.
    stream = server.client.chat.completions.create(
        model=TINY, messages=REPEATS, temperature=0, max_tokens=N, presence_penalty=2.0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat(server, presence_penalty=2.0)


# ---- 400s ------------------------------------------------------------------------------------------------------
TOO_MANY = {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice",
         "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."),
        ("/v1/chat/completions", {"stream_options": {"include_usage": True}}, "stream_options",
         "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
        ("/v1/chat/completions", {"stream": False, "stream_options": {"include_usage": True}}, "stream_options",
         "only allowed when 'stream' is enabled"),
        ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options",
         "only allowed when 'stream' is enabled"),
        ("/v1/chat/completions", {"top_p": 1.5}, "top_p", "Expected a value <= 1, but got 1.5"),
        ("/v1/chat/completions", {"top_p": -0.1}, "top_p", "Expected a value >= 0"),
        ("/v1/chat/completions", {"frequency_penalty": 2.5}, "frequency_penalty", "Expected a value <= 2"),
        ("/v1/chat/completions", {"frequency_penalty": -2.01}, "frequency_penalty", "Expected a value >= -2"),
        ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty", "Expected a value <= 2, but got 3"),
        ("/v1/completions", {"presence_penalty": -3}, "presence_penalty", "Expected a value >= -2"),
        ("/v1/chat/completions", {"frequency_penalty": "lots"}, "frequency_penalty", ""),
        ("/v1/chat/completions", {"logit_bias": {"abc": 1}}, "logit_bias", "Invalid key in 'logit_bias'"),
        ("/v1/chat/completions", {"logit_bias": {"-5": 1}}, "logit_bias", "Invalid key in 'logit_bias'"),
        ("/v1/chat/completions", {"logit_bias": {"42": 101}}, "logit_bias", "between -100 and 100"),
        ("/v1/chat/completions", {"logit_bias": {"42": -100.5}}, "logit_bias", "between -100 and 100"),
        ("/v1/chat/completions", {"logit_bias": {"42": "up"}}, "logit_bias", "between -100 and 100"),
        ("/v1/chat/completions", {"logit_bias": {"42": True}}, "logit_bias", "between -100 and 100"),
        ("/v1/chat/completions", {"logit_bias": TOO_MANY}, "logit_bias", "at most 300"),
        ("/v1/chat/completions", {"logit_bias": [1, 2]}, "logit_bias", ""),
        ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens", ">= 1"),
        ("/v1/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "maximum length 4"),
    ],
)  # fmt: skip
def test_refusals_name_the_parameter(server: Any, path: str, body: dict[str, Any], param: str, words: str) -> None:
    base = {"model": TINY, "messages": HI} if "chat" in path else {"model": TINY, "prompt": "hi"}
    r = server.http.post(path, json={**base, **body})
    assert r.status_code == 400, (body, r.text)
    validate(r.json(), "ErrorResponse")
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and words in err["message"], err


def test_logit_bias_outside_the_vocabulary_is_400_streamed_or_not(server: Any, tokenizer: Any) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            server.client.chat.completions.create(
                model=TINY, messages=HI, max_tokens=2, logit_bias={"1000000": 5}, stream=stream
            )
        assert e.value.status_code == 400 and e.value.param == "logit_bias", e.value
        assert "1000000" in e.value.message
    # The last id of the vocabulary is a token.
    last = len(tokenizer) - 1
    r = server.client.chat.completions.create(model=TINY, messages=HI, max_tokens=2, logit_bias={str(last): 5})
    assert r.choices[0].finish_reason == "length"


# ---- vLLM: the fields are forwarded -----------------------------------------------------------------------------
class FakeVLLM:
    """An upstream that records what the API forwards and answers a minimal chat.completion."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                fake.bodies.append(body)
                answer = json.dumps({
                    "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "length", "logprobs": None,
                                 "message": {"role": "assistant", "content": "ok", "refusal": None}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_vllm() -> Iterator[FakeVLLM]:
    fake = FakeVLLM()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_vllm_gets_penalties_and_bias_as_sent_and_top_p_zero_as_greedy(
    tiny_server_factory: Any, fake_vllm: FakeVLLM
) -> None:
    srv = tiny_server_factory(serving_backend="vllm", vllm_url=fake_vllm.url)
    sent = {"frequency_penalty": 1.25, "presence_penalty": -0.5, "logit_bias": {"42": -100, "7": 3}}
    r = srv.client.chat.completions.create(model=TINY, messages=HI, max_tokens=4, top_p=0.9, **sent)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "ok" and r.model == TINY
    up = fake_vllm.bodies[-1]
    assert {k: up[k] for k in sent} == sent and up["top_p"] == 0.9 and up["model"] == TINY
    assert "temperature" not in up  # unset fields stay unset: vLLM applies the model's generation config

    # vLLM refuses top_p=0 ("must be in (0, 1]"): it gets greedy decoding instead, the same tokens.
    srv.client.chat.completions.create(model=TINY, messages=HI, top_p=0, temperature=0.7, presence_penalty=1)
    up = fake_vllm.bodies[-1]
    assert "top_p" not in up and up["temperature"] == 0 and up["presence_penalty"] == 1

    # What OpenAI refuses never reaches vLLM.
    before = len(fake_vllm.bodies)
    for bad in ({"frequency_penalty": 2.5}, {"logit_bias": {"x": 1}}, {"top_p": 2}):
        with pytest.raises(openai.BadRequestError):
            srv.client.chat.completions.create(model=TINY, messages=HI, **bad)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        srv.client.completions.create(model=TINY, prompt="hi", stream_options={"include_usage": True})
    assert len(fake_vllm.bodies) == before
