"""``/v1/chat/completions`` for base, fine-tuned and checkpoint models, through the serving engine."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request
from api.models import resolve_model
from tunery import ids

router = APIRouter()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields (user, store, metadata...) are ignored
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None


def _messages(req: ChatRequest) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(req.messages):
        if m.role in ("tool", "function"):
            raise bad_request("Tool and function messages are not supported yet.", param=f"messages[{i}].role")
        if m.content is None:
            raise bad_request("Each message needs 'content'.", param=f"messages[{i}].content")
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        out.append({"role": m.role, "content": text})
    return out


def engine_error(e: Exception, not_found: type) -> APIError:
    """An engine's complaint about a request -> 400 (404 when the model's adapter is missing)."""
    status = 404 if isinstance(e, not_found) else 400
    return APIError(
        status, getattr(e, "message", str(e)), param=getattr(e, "param", None), code=getattr(e, "code", None)
    )


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatRequest, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)
) -> dict[str, Any] | StreamingResponse:
    from serving.engine import AdapterNotFound, EngineError, Generation, ModelRef, SamplingParams

    if (req.n or 1) != 1:
        raise bad_request("Only n=1 is supported.", param="n")
    if req.tools:
        raise bad_request("Tool calling is not supported yet.", param="tools")
    if req.logprobs:
        raise bad_request("logprobs are not supported yet.", param="logprobs")
    if req.response_format and req.response_format.get("type") not in (None, "text"):
        raise bad_request("Only response_format type 'text' is supported.", param="response_format")
    messages = _messages(req)
    with ctx.db.session() as s:
        model = resolve_model(s, ctx, t, req.model)
    if ctx.engine is None:
        raise APIError(503, "No serving engine is configured on this server.", type="server_error")
    if not Path(model.base_path, "config.json").is_file():
        raise APIError(
            503,
            f"The base model `{model.base_name}` is configured but its files are missing on this server.",
            type="server_error",
            code="model_unavailable",
            headers={"x-should-retry": "false"},
        )
    engine = ctx.engine
    ref = ModelRef(
        base_name=model.base_name,
        base_path=model.base_path,
        adapter_name=model.id if model.adapter_prefix else None,
        adapter_prefix=model.adapter_prefix,
    )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop,
        seed=req.seed,
    )
    cid, created = ids.completion_id(), int(time.time())
    # Identifies the backend configuration: engine kind, base model and adapter (as OpenAI's fp_... does).
    fingerprint = "fp_" + hashlib.sha256(f"embedded|{model.base_path}|{model.adapter_prefix}".encode()).hexdigest()[:12]

    def usage(g: Generation) -> dict[str, int]:
        return {
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
        }

    if not req.stream:
        try:
            gen = await run_in_threadpool(engine.generate, ref, messages, params)
        except EngineError as e:
            raise engine_error(e, AdapterNotFound) from None
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text, "refusal": None, "annotations": []},
                    "finish_reason": gen.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage(gen),
            "system_fingerprint": fingerprint,
        }

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    # Start generating before the response begins, so a bad request is still a clean 400.
    stream = engine.stream(ref, messages, params)
    try:
        first = await run_in_threadpool(next, stream, None)
    except EngineError as e:
        raise engine_error(e, AdapterNotFound) from None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **({"usage": None} if include_usage else {}),
        }

    def events() -> Iterator[str]:
        try:
            yield _sse(chunk({"role": "assistant", "content": "", "refusal": None}))
            item = first
            items = iter(stream)
            while item is not None:
                if isinstance(item, Generation):
                    yield _sse(chunk({}, item.finish_reason))
                    if include_usage:
                        yield _sse({**chunk({}), "choices": [], "usage": usage(item)})
                    break
                if item:
                    yield _sse(chunk({"content": item}))
                item = next(items, None)
            yield _sse("[DONE]")
        except EngineError as e:
            yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
        except Exception:
            import logging

            logging.getLogger("tunery.api").exception("streaming failed")
            yield _sse(
                {
                    "error": {
                        "message": "The server had an error while generating.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
