"""Chat and legacy completions: check the request, resolve its model within the caller's project and hand both
to the serving backend (serving/backend.py): the embedded engine or vLLM. No thread is held while a generation runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from anyio import to_thread

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, NotFound, RateLimited, ServiceError, Unavailable
from api.protocol.chat import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, SamplingRequest
from api.services.models import model_ref, resolve
from serving.backend import Answer, ServingBackend
from serving.errors import AdapterNotFound, EngineError, ServingUnavailable
from serving.sampling import SamplingParams

R = TypeVar("R", ChatCompletion, Completion)
# A streamed answer: server-sent event lines (``data: {...}\n\n``), ending with ``data: [DONE]``.
EventStream = AsyncIterator[str]


def serving_error(e: EngineError | ServingUnavailable) -> ServiceError:
    """A serving backend's typed error as the service's."""
    if isinstance(e, ServingUnavailable):
        kind = RateLimited if e.status == 429 else Unavailable
        return kind(e.message, code=e.code, retry_after=e.retry_after)
    kind_ = NotFound if isinstance(e, AdapterNotFound) else InvalidRequest
    return kind_(e.message, param=e.param, code=e.code)


def no_engine() -> Unavailable:
    return Unavailable(
        "This server has no serving engine: the embedded engine needs torch, transformers and peft in the API's "
        "environment; a control-plane image serves through vLLM (TUNERY_SERVING_BACKEND=vllm, TUNERY_VLLM_URL).",
        code="engine_unavailable",
    )


class ChatService:
    """Completions for the caller's models. Coroutines: a generation waits without holding a thread."""

    def __init__(self, ctx: AppContext, tenant: Tenant):
        self.ctx = ctx
        self.tenant = tenant

    async def chat_completion(self, req: ChatCompletionRequest) -> ChatCompletion | EventStream:
        """A ``chat.completion``, or (``stream``) its ``chat.completion.chunk`` events."""
        if req.tool_choice is not None and not req.tools:
            raise InvalidRequest(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                param="tool_choice",
            )
        return await self._serve(req, ChatCompletion, lambda serving: serving.chat_completions)

    async def completion(self, req: CompletionRequest) -> Completion | EventStream:
        """A legacy ``text_completion``, or (``stream``) its events."""
        return await self._serve(req, Completion, lambda serving: serving.completions)

    async def _serve(
        self,
        req: SamplingRequest,
        answer_type: type[R],
        call: Callable[[ServingBackend], Callable[..., Awaitable[Answer]]],
    ) -> R | EventStream:
        """Check the sampling options, resolve the request's model in the caller's project and hand all three to
        the serving backend. The backend gets the request as sent (unknown fields included)."""
        if req.stream_options is not None and not req.stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        body = req.model_dump(exclude_unset=True)
        try:
            params = SamplingParams.from_request(body)
        except EngineError as e:
            raise serving_error(e) from None
        resolved = await to_thread.run_sync(resolve, self.ctx, self.tenant, req.model)
        if self.ctx.serving is None:
            raise no_engine()
        try:
            answer = await call(self.ctx.serving)(model_ref(resolved), body, params)
        except (EngineError, ServingUnavailable) as e:
            raise serving_error(e) from None
        if isinstance(answer, dict):
            return answer_type.model_validate(answer)
        return answer
