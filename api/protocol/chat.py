"""Chat and legacy completions: ``/v1/chat/completions`` and ``/v1/completions``.

Requests declare every top-level field of OpenAI's ``CreateChatCompletionRequest`` and ``CreateCompletionRequest``,
so only fields newer than this schema are reported as unknown; all of them, known or not, reach the serving
backend as sent (vLLM implements most; the embedded engine refuses what it cannot do). The sampling options are
typed here; their ranges are checked in one place, ``SamplingParams.from_request`` (serving/sampling.py).

Responses are typed as far as OpenAI requires (``CreateChatCompletionResponse``, ``CreateCompletionResponse``); the
other fields a serving engine answers with (``annotations``, ``service_tier``, vLLM's own) pass through as they are.
A streamed answer is not a model: it is server-sent events of ``chat.completion.chunk`` objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from api.protocol.base import Name, OpenAIObject, OpenAIRequest, OpenAIResponse, omitted


# ---- requests ----------------------------------------------------------------------------------------------------
class TextPart(OpenAIObject):
    type: Literal["text"]
    text: str


class Message(OpenAIObject):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None


class StreamOptions(OpenAIObject):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingRequest(OpenAIRequest):
    """What chat and legacy completions share."""

    model: Name
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
    user: str | None = None


class ChatCompletionRequest(SamplingRequest):
    """OpenAI's ``CreateChatCompletionRequest``."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    # Accepted and passed on; the embedded engine ignores them.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    verbosity: str | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    moderation: Any = None
    prediction: dict[str, Any] | None = None
    function_call: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None


class CompletionRequest(SamplingRequest):
    """OpenAI's ``CreateCompletionRequest`` (legacy completions)."""

    prompt: str | Annotated[list[str], Field(min_length=1)] | list[int]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


# ---- responses ---------------------------------------------------------------------------------------------------
class EngineObject(OpenAIResponse):
    """Part of what a serving engine answered: fields beyond the declared ones pass through to the client."""

    model_config = ConfigDict(extra="allow")


class CompletionUsage(EngineObject):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(EngineObject):
    """OpenAI's ``ChatCompletionResponseMessage``."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


# A string, not OpenAI's enum: an engine may add reasons (vLLM's "abort"), and an answer is passed on, never lost.
FinishReason = str


class TopLogprob(EngineObject):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """OpenAI's ``ChatCompletionTokenLogprob``: a token's log probability and the most likely tokens in its place."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatCompletionLogprobs(EngineObject):
    """The log probabilities of a choice's content (or refusal) tokens."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class ChatCompletionChoice(EngineObject):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChatCompletionLogprobs | None = None


class ChatCompletion(EngineObject):
    """OpenAI's ``CreateChatCompletionResponse``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None = omitted()
    system_fingerprint: str | None = omitted()


class CompletionChoice(EngineObject):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: dict[str, Any] | None = None


class Completion(EngineObject):
    """OpenAI's ``CreateCompletionResponse``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = omitted()
    system_fingerprint: str | None = omitted()
