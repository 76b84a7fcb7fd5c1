"""The serving backend the API talks to: OpenAI requests in, OpenAI responses out, asynchronously.

Two implementations, chosen by ``TUNERY_SERVING_BACKEND``:

- ``EmbeddedBackend`` (serving/embedded.py): the embedded engine (transformers + PEFT) on the API's own CPU or GPU,
  behind a bounded queue and its own worker threads, so waiting generations never hold the API's threads;
- ``VLLMBackend`` (serving/vllm.py): proxies to vLLM servers, one per base model, which load adapters from the
  object store through Tunery's LoRA resolver (serving/vllm_plugin.py).

A request is ``(ModelRef, body, SamplingParams)``: ``body`` is the client's JSON as the API validated it
(``body["model"]`` is the name the client sent, and every response names that model); ``ModelRef`` says what that
name resolves to; ``SamplingParams`` (serving/sampling.py) are the request's sampling options, checked, as one typed
value: the embedded engine samples from it, the vLLM backend forwards the client's fields and uses it only where
vLLM differs from OpenAI. Errors
are typed: ``EngineError`` (400), ``AdapterNotFound`` (404), ``ServingUnavailable`` (503, or 429 when overloaded).
A streamed answer is an async iterator of server-sent-event lines (``data: {...}\\n\\n``, ending with
``data: [DONE]``); it is returned only once the request was accepted, so a bad request is still a clean error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from serving.protocol import ModelRef
from serving.sampling import SamplingParams
from tunery.embeddings import Embedded

Answer = dict[str, Any] | AsyncIterator[str]


def sse(obj: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` (or a literal such as ``[DONE]``) and a blank line."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def stream_error(message: str, type: str = "server_error") -> str:
    """The event that ends a stream which failed after its first chunk (the status line has been sent)."""
    return sse({"error": {"message": message, "type": type, "param": None, "code": None}})


class ServingBackend(Protocol):
    name: str  # "embedded" | "vllm"

    async def chat_completions(self, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        """``POST /v1/chat/completions``: a ``chat.completion`` object, or its ``chat.completion.chunk`` stream."""
        ...

    async def completions(self, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        """``POST /v1/completions`` (legacy): a ``text_completion`` object or stream."""
        ...

    async def embeddings(self, ref: ModelRef, texts: list[str] | list[list[int]], truncate: bool = False) -> Embedded:
        """``POST /v1/embeddings`` and the graders' cosine metric: each text's embedding (tunery/embeddings.py). A
        text longer than the model's context is cut with ``truncate``, an EngineError otherwise."""
        ...

    async def unload(self, ref: ModelRef) -> None:
        """Forget a deleted fine-tuned model: from memory, from the engine, from local caches."""
        ...

    def close(self) -> None:
        """Release threads (server shutdown)."""
        ...
