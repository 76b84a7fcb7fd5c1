"""The serving-engine interface: what the API hands a serving engine (``ModelRef``), what it gets back
(``Generation``), and the ``ChatEngine`` protocol the embedded engine (serving/engine.py) and the vLLM backend
(serving/vllm.py) implement. No torch here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from serving.sampling import SamplingParams
from tunery.embeddings import Embedded


@dataclass(frozen=True)
class ModelRef:
    """What to run: a base model folder, and optionally a LoRA adapter stored under an object-store prefix."""

    base_name: str  # e.g. "smollm2-135m-instruct"
    base_path: str  # local folder of the base model (safetensors, tokenizer, chat template)
    adapter_name: str | None = None  # the ft: model id; None means the base model
    adapter_prefix: str | None = None  # e.g. "jobs/ftjob-x/model/"


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens or the context was reached)
    prompt_tokens: int
    completion_tokens: int  # every token the model generated, the EOS or stop-string tokens included


class ChatEngine(Protocol):
    """What the API needs from a serving engine (embedded here; vLLM in production)."""

    def generate(self, ref: ModelRef, messages: list[dict], params: SamplingParams) -> Generation:
        """Generate one assistant reply. Raises EngineError for requests the client got wrong."""
        ...

    def stream(self, ref: ModelRef, messages: list[dict], params: SamplingParams) -> Iterator[str | Generation]:
        """Yield text deltas (str), then one Generation with the full text, finish_reason and usage.

        Lazy: nothing happens before the first ``next()``, which raises EngineError for a bad request.
        Closing the iterator early (client disconnect) stops the generation; ``close()`` is safe from any thread,
        also while another thread waits in ``next()``.
        """
        ...

    def unload(self, adapter_name: str) -> None:
        """Forget a fine-tuned model (deleted): drop its adapter from memory and from the local cache."""
        ...

    def count_prompt_tokens(self, ref: ModelRef, messages: list[dict]) -> int:
        """Tokens of the chat-templated prompt (with the generation prompt), as ``usage.prompt_tokens``."""
        ...

    def embed(self, ref: ModelRef, texts: list[str] | list[list[int]], truncate: bool = False) -> Embedded:
        """The embedding of each text (or token ids) by the model (tunery.embeddings.embed). A text longer than the
        model's context is cut with ``truncate``, an EngineError otherwise."""
        ...

    def close(self) -> None:
        """Stop every generation and free the engine's threads (the server is shutting down)."""
        ...
