"""The embedded serving backend: OpenAI chat completions on the embedded engine, without holding the API's threads.

Generations run on this backend's own worker threads; the API's event loop awaits them, so a hundred waiting chats
hold no thread of the API's pool and ``GET /v1/models`` stays fast. At most ``max_queue`` requests are admitted
at once (generating or waiting for the model); past that a client gets 429 with ``Retry-After``.

What the embedded engine cannot do (``n > 1``, tools, logprobs, JSON response formats, legacy completions) is a
clear 400 naming the parameter; the vLLM backend serves all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving.backend import Answer, sse, stream_error
from serving.errors import EngineError, ServingOverloaded, ServingUnavailable
from serving.protocol import ChatEngine, Generation, ModelRef
from serving.sampling import SamplingParams
from tunery import ids
from tunery.embeddings import Embedded

log = logging.getLogger("tunery.serving")


def _unsupported(body: dict[str, Any]) -> EngineError | None:
    """The first OpenAI feature of a chat request that the embedded engine cannot serve."""
    if (body.get("n") or 1) != 1:
        return EngineError("The embedded engine serves n=1 only (TUNERY_SERVING_BACKEND=vllm serves n > 1).", "n")
    if body.get("tools"):
        return EngineError("Tool calling needs the vLLM backend (TUNERY_SERVING_BACKEND=vllm).", "tools")
    if body.get("logprobs"):
        return EngineError("logprobs need the vLLM backend (TUNERY_SERVING_BACKEND=vllm).", "logprobs")
    fmt = body.get("response_format") or {}
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return EngineError(
            "Only response_format type 'text' is served by the embedded engine (TUNERY_SERVING_BACKEND=vllm serves "
            "json_object and json_schema).",
            "response_format",
        )
    return None


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(body.get("messages") or []):
        if m.get("role") in ("tool", "function"):
            raise EngineError(
                "Tool and function messages need the vLLM backend (TUNERY_SERVING_BACKEND=vllm).", f"messages[{i}].role"
            )
        content = m.get("content")
        if content is None:
            raise EngineError("Each message needs 'content'.", f"messages[{i}].content")
        text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
        out.append({"role": m["role"], "content": text})
    return out


def _usage(g: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def _close(stream: Iterator[Any]) -> None:
    """Close the engine's stream: its generation stops at the next token. Safe from any thread, also while a pool
    thread waits in its ``next()`` (serving.stream.Stream)."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def _finish(release: Callable[[], None], stream: Iterator[Any]) -> None:
    release()
    _close(stream)


class EmbeddedBackend:
    """The ServingBackend of the embedded mode, over a ChatEngine (the EmbeddedEngine)."""

    name = "embedded"

    def __init__(self, engine: ChatEngine, max_queue: int = 32, retry_after: int = 2):
        self.engine = engine
        self.max_queue = max_queue
        self.retry_after = retry_after
        self._pool = ThreadPoolExecutor(max_workers=max_queue, thread_name_prefix="tunery-generate")
        self._admitted = 0  # requests generating or waiting
        self._lock = threading.Lock()  # a stream's slot may be given back by the garbage collector's thread

    def _admit(self) -> Callable[[], None]:
        """Take a slot, or refuse with 429; returns the function that gives it back (once, however often called)."""
        with self._lock:
            if self._admitted >= self.max_queue:
                raise ServingOverloaded(
                    f"The embedded engine has {self._admitted} requests waiting or generating, its limit "
                    f"(TUNERY_SERVING_MAX_QUEUE={self.max_queue}); retry shortly.",
                    self.retry_after,
                )
            self._admitted += 1
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if not done.is_set():
                    done.set()
                    self._admitted -= 1

        return release

    @staticmethod
    def _check_files(ref: ModelRef) -> None:
        if not Path(ref.base_path, "config.json").is_file():
            raise ServingUnavailable(
                f"The base model `{ref.base_name}` is configured but its files are missing on this server.",
                code="model_unavailable",
            )

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def chat_completions(self, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        problem = _unsupported(body)
        if problem is not None:
            raise problem
        messages = _messages(body)
        self._check_files(ref)
        public = str(body["model"])
        cid, created = ids.completion_id(), int(time.time())
        # Identifies the backend configuration: engine kind, base model and adapter (as OpenAI's fp_... does).
        fingerprint = "fp_" + hashlib.sha256(f"embedded|{ref.base_path}|{ref.adapter_prefix}".encode()).hexdigest()[:12]
        release = self._admit()
        if not body.get("stream"):
            try:
                gen: Generation = await self._call(self.engine.generate, ref, messages, params)
            finally:
                release()
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": public,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": gen.text, "refusal": None, "annotations": []},
                        "finish_reason": gen.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(gen),
                "system_fingerprint": fingerprint,
            }

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = self.engine.stream(ref, messages, params)
        try:  # the first item checks the request: a bad one is still a clean 400
            first = await self._call(next, stream, None)
        except BaseException:
            release()
            _close(stream)
            raise

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": public,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **({"usage": None} if include_usage else {}),
            }

        events = self._events(stream, first, chunk, include_usage, release)
        # A response that never starts (the client left first) never runs the events' `finally`: give the slot back
        # and stop the generation when the events are dropped.
        weakref.finalize(events, _finish, release, stream)
        return events

    async def _events(
        self,
        stream: Iterator[str | Generation],
        first: str | Generation | None,
        chunk: Any,
        include_usage: bool,
        release: Callable[[], None],
    ) -> AsyncIterator[str]:
        try:
            yield sse(chunk({"role": "assistant", "content": "", "refusal": None}))
            item = first
            while item is not None:
                if isinstance(item, Generation):
                    yield sse(chunk({}, item.finish_reason))
                    if include_usage:
                        yield sse({**chunk({}), "choices": [], "usage": _usage(item)})
                    break
                if item:
                    yield sse(chunk({"content": item}))
                item = await self._call(next, stream, None)
            yield sse("[DONE]")
        except EngineError as e:
            yield stream_error(e.message, "invalid_request_error")
        except Exception:
            log.exception("streaming failed")
            yield stream_error("The server had an error while generating.")
        finally:
            _finish(release, stream)  # stops the generation at its next token (client gone)

    async def completions(self, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        raise EngineError(
            "Legacy completions (/v1/completions) need the vLLM backend (TUNERY_SERVING_BACKEND=vllm); use "
            "/v1/chat/completions with the embedded engine.",
            "model",
        )

    async def embeddings(self, ref: ModelRef, texts: list[str] | list[list[int]], truncate: bool = False) -> Embedded:
        self._check_files(ref)
        release = self._admit()
        try:
            result: Embedded = await self._call(self.engine.embed, ref, texts, truncate)
            return result
        finally:
            release()

    async def unload(self, ref: ModelRef) -> None:
        if ref.adapter_name is not None:
            await self._call(self.engine.unload, ref.adapter_name)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()  # every generation stops at its next token; nothing runs on after the server
