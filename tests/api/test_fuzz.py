"""Fuzzing (schemathesis) against a real tiny server: for OpenAI's published schema of the operations Tunery serves
and for Tunery's own ``/openapi.json``, generated requests that fit the schema and requests that do not, with the
operations' objects random and real. No answer is a 5xx, every answer is the one its document declares (its status,
media type and schema; a stream's events OpenAI's chunks) and every error OpenAI's error object (tests/fuzzing.py).

The budget is fixed and seeded: EXAMPLES per operation, generation mode and pass. ``bench/fuzz.py`` runs the same
for a wall-clock budget with a new seed each round.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
from schemathesis import Response
from schemathesis.core.failures import Failure

from tests import fuzz_checks, fuzzing
from tests.conftest import TINY, RunningServer

EXAMPLES = 15
SEED = 11

# schemathesis's strategies use the random module, which Hypothesis warns about.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@pytest.fixture
def fuzz_server(tiny_server_factory: Callable[..., RunningServer]) -> RunningServer:
    return fuzzing.authorised(tiny_server_factory(**fuzzing.SERVER_SETTINGS))


@pytest.mark.slow  # minutes: make test runs it, make test-fast does not
@pytest.mark.parametrize("document", fuzzing.DOCUMENTS)
def test_no_answer_is_a_server_error_or_undocumented(fuzz_server: RunningServer, document: str) -> None:
    tally = fuzzing.Tally()
    fuzzer = fuzzing.fuzzer(document, fuzz_server.base_url, tally)
    assert fuzzer.run(EXAMPLES, SEED, fuzzing.seed_objects(fuzz_server))
    assert tally.failures == [], tally.report()
    # Every operation was reached, and the second pass reached real objects: their reads answered 200.
    sent = {op for (_, op), n in tally.requests.items() if n}
    assert sent == {f"{op.method.upper()} {op.path}" for op in fuzzer.operations()}
    prefix = "" if document == "openai" else "/v1"
    for op in ("GET /files/{file_id}", "GET /models/{model}", "POST /fine_tuning/jobs", "POST /chat/completions"):
        method, path = op.split()
        statuses = tally.statuses[(document, f"{method} {prefix}{path}")]
        assert statuses[200] >= 1, (op, statuses)


# ---- the checks find what they should ------------------------------------------------------------------------
def _with_content(response: Response, content: bytes) -> Response:
    return Response(response.status_code, response.headers, content, response.request, response.elapsed, True)


def test_the_checks_find_a_broken_stream_and_a_foreign_error(fuzz_server: RunningServer) -> None:
    fuzzer = fuzzing.fuzzer("tunery", fuzz_server.base_url, fuzzing.Tally())
    chat = fuzzer.schema["/v1/chat/completions"]["POST"]
    body = {"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    case = chat.Case(body=body, media_type="application/json")
    stream = case.call(base_url=fuzzer.base_url, headers={"authorization": f"Bearer {fuzzing.API_KEY}"}, timeout=60)
    assert stream.status_code == 200 and stream.content.endswith(b"data: [DONE]\n\n")
    assert fuzz_checks.stream_is_openais(None, stream, case) is None  # type: ignore[arg-type]
    cut = stream.content.removesuffix(b"data: [DONE]\n\n")
    no_choices = stream.content.replace(b'"choices": [', b'"options": [', 1)
    failed = stream.content.replace(b"data: [DONE]", b'data: {"error": {"message": "boom", "type": "server_error"}}')
    for content, title in (
        (cut, "A stream that does not end"),
        (no_choices, "An event that is not OpenAI's CreateChatCompletionStreamResponse"),
        (failed, "An event that is not OpenAI's ErrorResponse"),  # no param, no code
        (failed.replace(b'"server_error"}', b'"server_error", "param": null, "code": null}'), "A server error"),
    ):
        with pytest.raises(Failure) as found:
            fuzz_checks.stream_is_openais(None, _with_content(stream, content), case)  # type: ignore[arg-type]
        assert found.value.title.startswith(title)

    missing = fuzzer.schema["/v1/models/{model}"]["GET"].Case(path_parameters={"model": "nope"})
    error = missing.call(base_url=fuzzer.base_url, headers={"authorization": f"Bearer {fuzzing.API_KEY}"}, timeout=60)
    assert error.status_code == 404 and fuzz_checks.error_is_openais(None, error, missing) is None  # type: ignore[arg-type]
    for content, title in (
        (b'{"detail": "Not Found"}', "An error that is not OpenAI's error object"),  # FastAPI's own shape
        (b"Traceback (most recent call last):\n  File ...", "A traceback in an error"),
    ):
        with pytest.raises(Failure) as found:
            fuzz_checks.error_is_openais(None, _with_content(error, content), missing)  # type: ignore[arg-type]
        assert found.value.title == title


def test_an_answer_its_document_does_not_declare_is_found_with_its_request(fuzz_server: RunningServer) -> None:
    """Tunery's document made wrong (a file's ``bytes`` a string): the fuzzer reports the operation, the check and
    a request that reproduces it."""
    tally = fuzzing.Tally()
    ours = fuzzing.tunery_document(fuzz_server.base_url)
    wrong: dict[str, Any] = copy.deepcopy(ours)
    wrong["components"]["schemas"]["FileObject"]["properties"]["bytes"] = {"type": "string"}
    fuzzer = fuzzing.Fuzzer("tunery", wrong, fuzz_server.base_url, tally)
    objects = fuzzing.seed_objects(fuzz_server)
    fuzzer.run(3, SEED, objects, only=re.escape("GET /v1/files/{file_id}"))
    assert set(tally.requests) == {("tunery", "GET /v1/files/{file_id}")}
    [found] = tally.failures
    assert (found.operation, found.check) == ("GET /v1/files/{file_id}", "Response violates schema")
    assert "is not of type" in found.message and f"/v1/files/{objects['file_id']}" in found.request
