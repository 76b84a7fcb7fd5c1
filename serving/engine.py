"""The embedded engine (transformers + PEFT, on the CPU or a local GPU).

The API holds one ``ChatEngine`` (serving/protocol.py) and hands it a ``ModelRef`` per request: a base model folder,
plus, for ``ft:`` models, the object-store prefix of a LoRA adapter. The production twin (vLLM with runtime LoRA
loading) implements the same protocol. A streamed generation is a ``Stream`` (serving/stream.py); the next token is
picked by serving/sampling.py's ``pick_token``.

Importing this module never imports torch, transformers or peft (the control plane imports it); the embedded
engine imports them on its first request.

Embedded engine, per base model folder: one model loaded on first use and kept; adapters are downloaded
into ``cache_dir/adapters/<safe name>/`` on first use and loaded onto that one model (wrapped once in a
``PeftModel``, ``load_adapter`` for more); a request activates its adapter with ``set_adapter``, a base-model
request runs inside ``disable_adapter()``. A fully fine-tuned ``ft:`` model (a whole model under its prefix, no
adapter) is downloaded the same way and loaded as a base model of its own. One generation at a time per base model:
a lock is held across choosing the adapter and generating, so concurrent requests never see each other's adapter.

Every call into the model (generating, loading or dropping an adapter) runs on the engine's one long-lived model
thread: torch's CPU thread pool is kept per calling thread, and a new calling thread per request builds and tears one
down each time. ``close()`` stops every generation at its next token and waits for that thread.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from serving.adapters import AdapterCache, is_full_model, safe_adapter_name
from serving.errors import EngineError, ServingUnavailable
from serving.protocol import Generation, ModelRef
from serving.sampling import SamplingParams, pick_token
from serving.stream import Failed, Stream
from serving.text import Detokenizer, emittable, find_stop, normalize_messages
from serving.threads import ModelThreads
from tunery import embeddings
from tunery.embeddings import Embedded
from tunery.storage import ObjectStore

__all__ = ["EmbeddedEngine"]

log = logging.getLogger("tunery.serving")

# Used when neither the model config nor the tokenizer states a context length.
DEFAULT_CONTEXT = 2048


@dataclass
class _Base:
    """One loaded base model, with the adapters loaded onto it."""

    path: str
    name: str
    load_lock: threading.Lock = field(default_factory=threading.Lock)  # loading the model
    lock: threading.Lock = field(default_factory=threading.Lock)  # model state (adapters) + generation
    tok_lock: threading.Lock = field(default_factory=threading.Lock)  # the Rust tokenizer is not re-entrant
    model: Any = None  # PreTrainedModel, or PeftModel once an adapter is loaded
    tokenizer: Any = None
    device: Any = None
    eos_ids: frozenset[int] = frozenset()
    context_len: int = DEFAULT_CONTEXT
    vocab_size: int = 0  # rows of the model's logits: the token ids logit_bias may name
    keep_logits_arg: bool = False  # forward() takes logits_to_keep
    adapters: dict[str, str] = field(default_factory=dict)  # safe name -> prefix it was loaded from


@dataclass
class _Job:
    base: _Base
    ref: ModelRef
    params: SamplingParams
    prompt_ids: list[int]
    max_new: int


def _closing() -> ServingUnavailable:
    return ServingUnavailable("The serving engine is shutting down; retry on another replica.", retry_after=1)


def _norm_prefix(prefix: str | None) -> str:
    return (prefix or "").strip("/") + "/"


class EmbeddedEngine:
    """The embedded ChatEngine: transformers + PEFT in this process, on the CPU or a local GPU."""

    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        device: str = "auto",
        max_new_tokens: int = 0,
        cpu_threads: Callable[[], int] | None = None,
    ):
        """``cpu_threads``: how many CPU threads the model may use now, asked before each call into the model and
        at every generated token (the embedded server's :meth:`scheduler.cores.CoreShare.engine_threads`, which
        also learns from it that the engine is answering); None: torch's default, every core."""
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.adapters = AdapterCache(store, self.cache_dir / "adapters")
        self._bases: dict[str, _Base] = {}
        self._bases_lock = threading.Lock()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-model")
        self._running: set[threading.Event] = set()  # the cancel events of the generations not yet finished
        self._running_lock = threading.Lock()
        self._closed = False
        self._threads = ModelThreads(cpu_threads)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        try:
            if self._closed:
                raise RuntimeError("closed")
            return self._model_thread.submit(self._with_threads, fn, *args)
        except RuntimeError:
            raise _closing() from None

    def _with_threads(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._threads.fit()
        return fn(*args)

    def _on_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the model thread and return its result (or raise its error)."""
        try:
            return self._submit(fn, *args).result()
        except CancelledError:  # closed before it ran
            raise _closing() from None

    def close(self) -> None:
        """Stop every generation at its next token and wait for the model thread to finish."""
        self._closed = True
        with self._running_lock:
            for cancel in self._running:
                cancel.set()
        self._model_thread.shutdown(wait=True, cancel_futures=True)

    # ----------------------------------------------------------------------------------- public interface

    def generate(self, ref: ModelRef, messages: list[dict], params: SamplingParams) -> Generation:
        job = self._prepare(ref, messages, params)
        items: list[str | Generation] = []
        self._on_model_thread(self._work, job, threading.Event(), items.append)
        if not items or not isinstance(items[-1], Generation):  # cancelled by close()
            raise _closing()
        return items[-1]

    def stream(self, ref: ModelRef, messages: list[dict], params: SamplingParams) -> Stream:
        """The items of one generation as the model thread makes them (see :class:`Stream`)."""
        return Stream(lambda: self._prepare(ref, messages, params), self._start)

    def _start(self, job: _Job, cancel: threading.Event, put: Callable[[object], None]) -> None:
        """Generate ``job`` on the model thread, handing each item to ``put`` and then, if no Generation came (the
        engine closed mid-way), a failure."""

        def work() -> None:
            try:
                self._work(job, cancel, put)
            except BaseException as e:
                put(Failed(e))
            finally:  # read only when no Generation came
                put(Failed(_closing()))

        future = self._submit(work)
        future.add_done_callback(lambda f: put(Failed(_closing())) if f.cancelled() else None)

    def _work(self, job: _Job, cancel: threading.Event, put: Callable[[str | Generation], None]) -> None:
        """Generate (on the model thread), handing each item to ``put``; ``close()`` cancels it."""
        with self._running_lock:
            self._running.add(cancel)
        try:
            if self._closed:
                cancel.set()
            with job.base.lock:
                for item in self._run(job, cancel):
                    put(item)
        finally:
            with self._running_lock:
                self._running.discard(cancel)

    def unload(self, adapter_name: str) -> None:
        safe = safe_adapter_name(adapter_name)
        with self._bases_lock:
            bases = list(self._bases.values())
        for base in bases:
            self._on_model_thread(self._unload_from, base, safe, adapter_name)
        self._drop_full_model(adapter_name)
        self.adapters.remove(adapter_name)

    def _unload_from(self, base: _Base, safe: str, adapter_name: str) -> None:
        with base.lock:
            if safe in base.adapters:
                self._drop_adapter(base, safe)
                log.info("unloaded adapter %s from %s", adapter_name, base.name)

    def _drop_full_model(self, adapter_name: str) -> None:
        """Forget a fully fine-tuned model loaded as a base model of its own."""
        key = os.path.abspath(self.adapters.path(adapter_name))
        with self._bases_lock:
            base = self._bases.pop(key, None)
        if base is not None:
            with base.lock:
                base.model = None
            log.info("unloaded fully fine-tuned model %s", adapter_name)

    def count_prompt_tokens(self, ref: ModelRef, messages: list[dict]) -> int:
        msgs = normalize_messages(messages)
        return len(self._encode(self._base(ref), msgs))

    def embed(self, ref: ModelRef, texts: list[str] | list[list[int]], truncate: bool = False) -> Embedded:
        if ref.adapter_name is not None:
            local = self.adapters.fetch(ref.adapter_name, ref.adapter_prefix)
            if is_full_model(local):  # full fine-tuning: the model is a base model of its own
                ref = ModelRef(base_name=ref.adapter_name, base_path=str(local))
        base = self._base(ref)
        try:
            return self._on_model_thread(self._embed, base, ref, texts, truncate)  # type: ignore[no-any-return]
        except embeddings.InputTooLong as e:
            raise EngineError(
                f"This model's maximum context length is {e.limit} tokens, however you requested {e.tokens} tokens "
                f"in input {e.index}. Please reduce your prompt.",
                "input",
                "context_length_exceeded",
            ) from None

    def _embed(self, base: _Base, ref: ModelRef, texts: list[str] | list[list[int]], truncate: bool) -> Embedded:
        """Embed on the model thread, the request's adapter active (or every adapter off, for the base model)."""
        with base.lock:
            adapters_off: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if ref.adapter_name is not None:
                safe = self._ensure_adapter(base, ref)
                base.model.set_adapter(safe, inference_mode=True)
            elif base.adapters:
                adapters_off = base.model.disable_adapter()
            model = base.model.get_base_model() if hasattr(base.model, "get_base_model") else base.model
            if texts and isinstance(texts[0], str):
                with base.tok_lock:
                    texts = embeddings.tokenize(base.tokenizer, cast(list[str], texts))
            else:
                for i, ids in enumerate(cast(list[list[int]], texts)):
                    if any(not 0 <= t < base.vocab_size for t in ids):
                        raise EngineError(
                            f"'input[{i}]' holds a token id outside this model's vocabulary of {base.vocab_size}.",
                            "input",
                        )
            with adapters_off:
                return embeddings.embed(model, base.tokenizer, texts, max_length=base.context_len, truncate=truncate)

    # -------------------------------------------------------------------------------------- base models

    def _resolve_device(self) -> Any:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _base(self, ref: ModelRef) -> _Base:
        key = os.path.abspath(ref.base_path)
        with self._bases_lock:
            base = self._bases.setdefault(key, _Base(path=key, name=ref.base_name))
        with base.load_lock:
            if base.model is None:
                self._on_model_thread(self._load_base, base)
        return base

    def _load_model(self, base: _Base) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        if base.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            base.path, dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
        return model.to(base.device).eval()

    def _load_base(self, base: _Base) -> None:
        from transformers import AutoTokenizer

        path = Path(base.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"base model {base.name}: {path} has no config.json")
        base.device = self._resolve_device()
        tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True, trust_remote_code=False)
        model = self._load_model(base)
        eos: set[int] = set()
        for ids in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(ids, int):
                eos.add(ids)
            elif isinstance(ids, list | tuple):
                eos.update(int(i) for i in ids)
        limits = [
            n
            for n in (
                getattr(model.config, "max_position_embeddings", None),
                tokenizer.model_max_length if tokenizer.model_max_length < 10_000_000 else None,
            )
            if isinstance(n, int) and n > 0
        ]
        base.tokenizer = tokenizer
        base.eos_ids = frozenset(eos)
        base.context_len = min(limits) if limits else DEFAULT_CONTEXT
        base.vocab_size = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        base.keep_logits_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        base.model = model
        log.info("loaded base model %s from %s on %s", base.name, base.path, base.device)

    # --------------------------------------------------------------------------------------- a request

    def _encode(self, base: _Base, messages: list[dict[str, str]]) -> list[int]:
        from jinja2 import TemplateError

        tokenizer = base.tokenizer
        if not tokenizer.chat_template:
            raise EngineError(f"The model `{base.name}` has no chat template.", "model")
        with base.tok_lock:
            try:
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except TemplateError as e:
                raise EngineError(f"The model's chat template rejected these messages: {e}", "messages") from None
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _budget(self, base: _Base, n_prompt: int, params: SamplingParams) -> int:
        """How many tokens may be generated: max_tokens, within the context. Without max_tokens: up to the context,
        or ``max_new_tokens`` when that is set (0: no default cap, as OpenAI has none)."""
        ctx = base.context_len
        if n_prompt >= ctx:
            raise EngineError(
                f"This model's maximum context length is {ctx} tokens. However, your messages resulted in "
                f"{n_prompt} tokens. Please reduce the length of the messages.",
                "messages",
                "context_length_exceeded",
            )
        room = ctx - n_prompt
        if params.max_tokens is None:
            return min(self.max_new_tokens, room) if self.max_new_tokens else room
        if params.max_tokens > room:
            raise EngineError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the messages, {params.max_tokens} in "
                "the completion). Please reduce the length of the messages or completion.",
                "max_tokens",
                "context_length_exceeded",
            )
        return params.max_tokens

    def _prepare(self, ref: ModelRef, messages: list[dict], params: SamplingParams) -> _Job:
        """Check a request, load what it needs (base model, adapter) and tokenize its prompt."""
        params.check()
        msgs = normalize_messages(messages)
        if ref.adapter_name is not None:
            # Download before taking the model's lock: a running generation is not held up by the store.
            local = self.adapters.fetch(ref.adapter_name, ref.adapter_prefix)
            if is_full_model(local):  # full fine-tuning: the model is a base model of its own
                ref = ModelRef(base_name=ref.adapter_name, base_path=str(local))
        base = self._base(ref)
        if params.logit_bias:
            params.check(vocab_size=base.vocab_size)
        prompt_ids = self._encode(base, msgs)
        max_new = self._budget(base, len(prompt_ids), params)
        if ref.adapter_name is not None:  # load it now, so a bad adapter is an error before any token is streamed
            self._on_model_thread(self._ensure_adapter_locked, base, ref)
        return _Job(base=base, ref=ref, params=params, prompt_ids=prompt_ids, max_new=max_new)

    # ------------------------------------------------------------------------------------------ adapters

    def _ensure_adapter_locked(self, base: _Base, ref: ModelRef) -> str:
        with base.lock:
            return self._ensure_adapter(base, ref)

    def _ensure_adapter(self, base: _Base, ref: ModelRef) -> str:
        """Load the request's adapter onto the base model unless it is there (call with base.lock held)."""
        assert ref.adapter_name is not None
        safe = safe_adapter_name(ref.adapter_name)
        prefix = _norm_prefix(ref.adapter_prefix)
        if base.adapters.get(safe) == prefix:
            return safe
        if safe in base.adapters:  # the model now points at another prefix
            self._drop_adapter(base, safe)
        local = self.adapters.fetch(ref.adapter_name, ref.adapter_prefix)
        from peft import PeftModel

        try:
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(
                    str(local), adapter_name=safe, is_trainable=False, torch_device=str(base.device)
                )
            else:
                base.model = PeftModel.from_pretrained(
                    base.model, str(local), adapter_name=safe, is_trainable=False, torch_device=str(base.device)
                )
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            # The model may hold half an adapter now: start again from a clean copy of the base model.
            log.exception("adapter %s failed to load on %s; reloading the base model", ref.adapter_name, base.name)
            base.adapters.clear()
            base.model = self._load_model(base)
            raise EngineError(
                f"The model `{ref.adapter_name}` cannot be loaded onto its base model `{ref.base_name}`: {e}",
                "model",
            ) from e
        base.model.eval()
        base.adapters[safe] = prefix
        log.info("loaded adapter %s onto %s (%d adapters)", ref.adapter_name, base.name, len(base.adapters))
        return safe

    def _drop_adapter(self, base: _Base, safe: str) -> None:
        """Remove one adapter from the model (call with base.lock held)."""
        del base.adapters[safe]
        if base.adapters:
            if safe in base.model.active_adapters:
                base.model.set_adapter(next(iter(base.adapters)), inference_mode=True)
            base.model.delete_adapter(safe)
        else:
            # The last one: back to the plain model, without LoRA layers.
            base.model = base.model.unload()

    # ---------------------------------------------------------------------------------------- generating

    def _run(self, job: _Job, cancel: threading.Event) -> Iterator[str | Generation]:
        """Choose the adapter and generate (call with base.lock held; consume in one thread)."""
        base = job.base
        adapters_off: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if job.ref.adapter_name is not None:
            safe = self._ensure_adapter(base, job.ref)  # again: it may have been unloaded since _prepare
            base.model.set_adapter(safe, inference_mode=True)
        elif base.adapters:
            adapters_off = base.model.disable_adapter()
        with adapters_off:
            yield from self._decode(base, job, cancel)

    def _decode(self, base: _Base, job: _Job, cancel: threading.Event) -> Iterator[str | Generation]:
        """The token loop (KV cache): yields the text as it becomes safe to send, then the Generation."""
        import numpy as np
        import torch

        params = job.params
        stops = [s for s in params.stop if s]
        rng = None
        if not params.greedy:  # temperature 0, or top_p 0 (a nucleus of one token)
            rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        adjust = None
        if params.adjusts_logits:
            from serving.penalties import OpenAIPenaltiesLogitsProcessor

            adjust = OpenAIPenaltiesLogitsProcessor(
                params.frequency_penalty, params.presence_penalty, params.logit_bias
            )
        extra = {"logits_to_keep": 1} if base.keep_logits_arg else {}
        input_ids = torch.tensor([job.prompt_ids], device=base.device)
        past = None
        out: list[int] = []
        text, sent, finish = "", 0, "length"
        detok = Detokenizer(base.tokenizer, base.tok_lock)
        for _ in range(job.max_new):
            if cancel.is_set():
                return
            self._threads.fit()  # a trainer started or ended during a long answer
            with torch.inference_mode():
                result = base.model(input_ids=input_ids, past_key_values=past, use_cache=True, **extra)
                past = result.past_key_values
                logits = result.logits[0, -1]
                if adjust is not None:  # counts over this completion's tokens only: the prompt is not passed
                    logits = adjust(torch.tensor([out], dtype=torch.long, device=logits.device), logits[None])[0]
                token = pick_token(logits, params, rng)
            out.append(token)
            if token in base.eos_ids:
                finish, text = "stop", detok.finish(out)  # EOS is a special token: it decodes to nothing
                break
            text = detok.add(out)
            if stops and (at := find_stop(text, stops)) >= 0:
                text, finish = text[:at], "stop"
                break
            end = emittable(text, stops)
            if end > sent:
                yield text[sent:end]
                sent = end
            input_ids = torch.tensor([[token]], device=base.device)
        else:  # the budget ran out: what the last tokens decode to, an unfinished character included
            text = detok.finish(out)
        if len(text) > sent:
            yield text[sent:]
        yield Generation(text=text, finish_reason=finish, prompt_tokens=len(job.prompt_ids), completion_tokens=len(out))
