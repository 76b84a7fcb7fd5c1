"""The checks of the fuzz suite (tests/fuzzing.py), per document: schemathesis's own, and Tunery's where the
documents say too little (errors, streams) or what they say differs from what OpenAI answers, each with why."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import schema as openai_schema


def error_is_openais(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx is OpenAI's error object (``{"error": {message, type, param, code}}``), never a traceback.
    OpenAI's schema documents no error status for most operations, so response_schema_conformance cannot see it."""
    if response.status_code < 400:
        return None
    text = response.text
    if "Traceback" in text or 'File "' in text:
        raise Failure(operation=case.operation.label, title="A traceback in an error", message=text[:500])
    try:
        openai_schema.validate(json.loads(text), "ErrorResponse")
    except Exception as e:
        raise Failure(
            operation=case.operation.label,
            title="An error that is not OpenAI's error object",
            message=f"{type(e).__name__}: {str(e)[:300]}\nBody: {text[:300]}",
        ) from None
    return None


# What each event of a stream is, in OpenAI's schema (OpenAI's legacy completions stream completion objects).
STREAM_CHUNKS = {"/chat/completions": "CreateChatCompletionStreamResponse", "/completions": "CreateCompletionResponse"}


def _content_type(response: Any) -> str:
    return str((response.headers.get("content-type") or [""])[0]).split(";")[0].strip().lower()


def stream_is_openais(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """A streamed answer is server-sent events whose data are OpenAI's chunks, ending with ``[DONE]``; an error
    after the first chunk is OpenAI's error object, and never a server error."""
    if _content_type(response) != "text/event-stream":
        return None
    chunk = STREAM_CHUNKS[case.path.removeprefix("/v1")]
    events = [e for e in response.content.decode().split("\n\n") if e.strip()]
    datas = ["\n".join(ln[5:].strip() for ln in e.splitlines() if ln.startswith("data:")) for e in events]

    def fail(title: str, message: str) -> Failure:
        return Failure(operation=case.operation.label, title=title, message=message[:1000])

    if not datas or (datas[-1] != "[DONE]" and '"error"' not in datas[-1]):
        raise fail("A stream that does not end", f"Last events: {datas[-2:]}")
    for data in datas[:-1] if datas[-1] == "[DONE]" else datas:
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise fail("An event that is not JSON", f"{e}\nEvent: {data}") from None
        schema = "ErrorResponse" if isinstance(obj, dict) and "error" in obj else chunk
        try:
            openai_schema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            raise fail(f"An event that is not OpenAI's {schema}", f"{str(e)[:400]}\nEvent: {data}") from None
        if schema == "ErrorResponse" and obj["error"]["type"] == "server_error":
            raise fail("A server error in a stream", data)
    return None


def _body_schema_conformance(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """response_schema_conformance, but for streams: schemathesis reads the schema of ``text/event-stream`` as that
    of each event's envelope (OpenAPI 3.2's ``itemSchema``); OpenAI's names the chunk there and Tunery's the whole
    body (a string, as OpenAPI 3.1 reads it). stream_is_openais checks the events' data instead."""
    if _content_type(response) == "text/event-stream":
        return None
    return response_schema_conformance(ctx, response, case)


def _openai_content_type(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """content_type_conformance on OpenAI's schema, but for two answers it documents wrongly (tests/openai/API-NOTES
    (a)): a file's content is its bytes, not the JSON string the schema declares (the SDK asks for
    ``application/binary``), and a streamed legacy completion is server-sent events, as OpenAI's own API answers,
    though the schema lists JSON only (it lists both for chat)."""
    if case.path == "/files/{file_id}/content":
        return None
    if case.path == "/completions" and _content_type(response) == "text/event-stream":
        return None
    return content_type_conformance(ctx, response, case)


CHECKS: dict[str, list[Callable[..., bool | None]]] = {
    # Tunery's own schema declares every status it answers (200, 4XX, 5XX) and each media type.
    "tunery": [
        not_a_server_error,
        _body_schema_conformance,
        status_code_conformance,
        content_type_conformance,
        error_is_openais,
        stream_is_openais,
    ],
    # OpenAI's schema declares only 200 (and 429 for completions): status_code_conformance would fail every 4xx a
    # client causes, so it is left out; errors are checked against OpenAI's ErrorResponse instead.
    "openai": [not_a_server_error, _body_schema_conformance, _openai_content_type, error_is_openais, stream_is_openais],
}
