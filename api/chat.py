"""``/v1/chat/completions`` and ``/v1/completions`` for base, fine-tuned and checkpoint models.

The route validates the request, resolves the model within the caller's project and hands both to the serving
backend (serving/backend.py): the embedded engine or vLLM. It holds no thread while a generation runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import tenant
from api.context import AppContext, Tenant, get_ctx
from api.errors import APIError, bad_request
from api.models import model_ref, resolve_model
from serving.backend import Answer, ServingBackend
from serving.engine import ModelRef
from serving.errors import AdapterNotFound, EngineError, ServingUnavailable
from serving.sampling import SamplingParams

router = APIRouter()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # tool_calls, tool_call_id, ...
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingRequest(BaseModel):
    """What chat and legacy completions share. Unknown OpenAI fields are kept and passed to vLLM.

    The sampling options are typed here; their ranges are checked in one place, ``SamplingParams.from_request``
    (serving/sampling.py), which both serving backends get the result of.
    """

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None  # token id -> bias; keys and values are checked with the others
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatRequest(SamplingRequest):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1)] | list[int]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None


def serving_error(e: Exception) -> APIError:
    """A serving backend's typed error as the OpenAI-shaped answer."""
    if isinstance(e, ServingUnavailable):
        headers = {"retry-after": str(e.retry_after)} if e.retry_after else {"x-should-retry": "false"}
        kind = "rate_limit_error" if e.status == 429 else "server_error"
        return APIError(e.status, e.message, type=kind, code=e.code, headers=headers)
    assert isinstance(e, EngineError)
    return APIError(404 if isinstance(e, AdapterNotFound) else 400, e.message, param=e.param, code=e.code)


async def _serve(
    ctx: AppContext, t: Tenant, req: SamplingRequest, call: Callable[[ServingBackend], Callable[..., Awaitable[Answer]]]
) -> dict[str, Any] | StreamingResponse:
    """Check the sampling options, resolve the request's model in the caller's project and hand all three to the
    serving backend."""
    if req.stream_options is not None and not req.stream:
        raise bad_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    body = req.model_dump(exclude_unset=True)
    try:
        params = SamplingParams.from_request(body)
    except EngineError as e:
        raise serving_error(e) from None

    def resolve() -> ModelRef:
        with ctx.db.session() as s:
            return model_ref(resolve_model(s, ctx, t, req.model))

    ref = await run_in_threadpool(resolve)
    if ctx.serving is None:
        raise APIError(
            503,
            "This server has no serving engine: the embedded engine needs torch, transformers and peft in the API's "
            "environment; a control-plane image serves through vLLM (TUNERY_SERVING_BACKEND=vllm, TUNERY_VLLM_URL).",
            type="server_error",
            code="engine_unavailable",
            headers={"x-should-retry": "false"},
        )
    try:
        answer = await call(ctx.serving)(ref, body, params)
    except (EngineError, ServingUnavailable) as e:
        raise serving_error(e) from None
    if isinstance(answer, dict):
        return answer
    return StreamingResponse(answer, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatRequest, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)
) -> dict[str, Any] | StreamingResponse:
    if req.tool_choice is not None and not req.tools:
        raise bad_request(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    return await _serve(ctx, t, req, lambda serving: serving.chat_completions)


@router.post("/completions", response_model=None)
async def completions(
    req: CompletionRequest, ctx: AppContext = Depends(get_ctx), t: Tenant = Depends(tenant)
) -> dict[str, Any] | StreamingResponse:
    return await _serve(ctx, t, req, lambda serving: serving.completions)
