"""The vLLM serving backend: the API proxies OpenAI requests to vLLM servers, asynchronously. No torch here.

One vLLM server per base model, started with ``--served-model-name <the base model's Tunery name>``,
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, running Tunery's LoRA resolver
(``python -m serving.vllm_server``, see serving/vllm_plugin.py). ``TUNERY_VLLM_URL`` serves every base model
that ``TUNERY_VLLM_URLS`` (model name -> URL) does not name; a fully fine-tuned ``ft:`` model is a model of its own,
served when ``TUNERY_VLLM_URLS`` names it.

How an ``ft:`` model reaches vLLM (docs/serving.md has the why):

- vLLM knows a fine-tuned model by its adapter's object-store prefix (``jobs/ftjob-x/model``,
  ``jobs/ftjob-x/checkpoints/step-24``): the API sends that name in ``model``, after its own tenancy checks.
- The first request for a name vLLM does not hold makes vLLM ask its LoRA resolvers; Tunery's fetches the adapter
  from the object store into the vLLM pod's disk and vLLM loads it, once, under a per-name lock (20 concurrent cold
  requests load it once). vLLM keeps ``--max-loras`` on the GPU and ``--max-cpu-loras`` in memory, least recently
  used first, and reloads an evicted one from that disk copy on demand. A restarted vLLM resolves again.
- Before a name's first request from this process, the API reads the adapter's ``adapter_config.json`` and manifest
  and checks them (tunery/servable.py): a mismatch is a 400, never vLLM serving something else.
- Deleting a model unloads it from every vLLM (``/v1/unload_lora_adapter``); the API answers 404 for it from then on.

Responses name the model the client sent, never vLLM's internal name. A vLLM that is down, starting or answering
5xx gives the client a 503 with ``Retry-After``; a connection is given ``TUNERY_VLLM_CONNECT_TIMEOUT_SECONDS``, and
each read ``TUNERY_VLLM_READ_TIMEOUT_SECONDS``, so nothing hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from serving.adapters import CONFIG_FILE, WEIGHTS_FILE, is_full_model
from serving.backend import Answer, sse, stream_error
from serving.errors import AdapterNotFound, EngineError, ServingUnavailable
from serving.protocol import ModelRef
from serving.sampling import SamplingParams
from tunery import servable
from tunery.embeddings import Embedded
from tunery.storage import ObjectNotFound, ObjectStore
from tunery.tensorfiles import read_header

log = logging.getLogger("tunery.serving.vllm")

MANIFEST_FILE = "tunery_manifest.json"
# Fields vLLM adds to OpenAI's objects; dropped from what clients see when they are empty.
_VLLM_EXTRAS = (
    "prompt_token_ids",
    "prompt_text",
    "prompt_logprobs",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
    "token_ids",
    "stop_reason",
    "routed_experts",
)
# Message fields whose null means something to a client (content: none with tool calls; refusal: none).
_NULLABLE = ("content", "refusal")


def vllm_model_name(ref: ModelRef) -> str:
    """The name vLLM knows a model by: the base model's Tunery name, or the adapter's object-store prefix."""
    if ref.adapter_prefix is None:
        return ref.base_name
    return ref.adapter_prefix.strip("/")


def upstream_body(body: dict[str, Any], params: SamplingParams, name: str) -> dict[str, Any]:
    """The request as vLLM gets it: the client's fields as they came (vLLM implements OpenAI's sampling options,
    ``frequency_penalty``, ``presence_penalty`` and ``logit_bias`` included, and leaves unset ones to the model's
    generation config), under vLLM's name for the model.

    One translation: OpenAI accepts ``top_p=0`` (the smallest nucleus: only the most likely token), vLLM refuses it
    ("top_p must be in (0, 1]", vllm/sampling_params.py). The same tokens come from greedy decoding, so vLLM is sent
    ``temperature=0`` and no ``top_p``; penalties and biases still apply before the choice, as with top_p=0.
    """
    payload = {**body, "model": name}
    if params.top_p == 0:
        payload.pop("top_p", None)
        payload["temperature"] = 0.0
    return payload


def _clean(obj: dict[str, Any], public: str) -> dict[str, Any]:
    """A vLLM response object as OpenAI's: the client's model name, vLLM's empty extras dropped."""
    out = {k: v for k, v in obj.items() if not (k in _VLLM_EXTRAS and not v)}
    if "model" in out:
        out["model"] = public
    if isinstance(out.get("usage"), dict):
        out["usage"] = {k: v for k, v in out["usage"].items() if v is not None}
    if isinstance(out.get("choices"), list):
        out["choices"] = [_clean_choice(c) if isinstance(c, dict) else c for c in out["choices"]]
    return out


def _clean_choice(choice: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in choice.items() if not (k in _VLLM_EXTRAS and not v)}
    for key in ("message", "delta"):
        if isinstance(out.get(key), dict):  # vLLM writes null for fields OpenAI leaves out (annotations, audio, ...)
            out[key] = {k: v for k, v in out[key].items() if v is not None or k in _NULLABLE}
    return out


class VLLMBackend:
    """The ServingBackend that proxies to vLLM servers."""

    name = "vllm"

    def __init__(
        self,
        store: ObjectStore,
        *,
        url: str = "",
        urls: dict[str, str] | None = None,
        api_key: str = "",
        max_lora_rank: int = 16,
        connect_timeout: float = 3.0,
        read_timeout: float = 600.0,
        retry_after: int = 5,
        starting: Callable[[str], bool] | None = None,
    ):
        self.store = store
        self.url = url.rstrip("/")
        self.urls = {k: v.rstrip("/") for k, v in (urls or {}).items()}
        self.max_lora_rank = max_lora_rank
        self.retry_after = retry_after
        self.starting = starting  # name of a model -> whether its vLLM is still starting (launched by tunery serve)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        self._checked: set[str] = set()  # adapter prefixes whose files passed the check (they never change)
        self._check_locks: dict[str, asyncio.Lock] = {}

    # ---------------------------------------------------------------------------------------------- routing

    def server(self, model_name: str) -> str:
        """The URL of the vLLM serving a model (a base model's name, or a fully fine-tuned ft: model's id)."""
        url = self.urls.get(model_name) or self.url
        if not url:
            raise ServingUnavailable(
                f"No vLLM server is configured for the model `{model_name}`: set TUNERY_VLLM_URL, or "
                f'TUNERY_VLLM_URLS=\'{{"{model_name}": "http://..."}}\'.',
                code="model_unavailable",
            )
        return url

    async def _route(self, ref: ModelRef) -> tuple[str, str]:
        """(vLLM URL, the model name vLLM knows) for a request, after checking an adapter's files once."""
        if ref.adapter_name is not None and ref.adapter_name in self.urls:  # a fully fine-tuned model of its own
            return self.urls[ref.adapter_name], ref.adapter_name
        url = self.server(ref.base_name)
        if ref.adapter_prefix is not None:
            await self._check_adapter(ref)
        return url, vllm_model_name(ref)

    async def _check_adapter(self, ref: ModelRef) -> None:
        prefix = (ref.adapter_prefix or "").strip("/") + "/"
        if prefix in self._checked:
            return
        lock = self._check_locks.setdefault(prefix, asyncio.Lock())
        async with lock:
            if prefix not in self._checked:
                await asyncio.to_thread(self._check_files, ref, prefix)
                self._checked.add(prefix)

    def _check_files(self, ref: ModelRef, prefix: str) -> None:
        names = {key[len(prefix) :] for key in self.store.list(prefix) if "/" not in key[len(prefix) :]}
        if is_full_model(names):
            raise EngineError(
                f"`{ref.adapter_name}` is a fully fine-tuned model, not an adapter: vLLM serves it as a model of its "
                f"own. Start a vLLM with --model <a copy of {prefix} from the object store> --served-model-name "
                f"'{ref.adapter_name}', and name it in TUNERY_VLLM_URLS (docs/serving.md).",
                "model",
                "model_not_served",
            )
        try:
            config = json.loads(self.store.get_bytes(prefix + CONFIG_FILE))
            manifest = json.loads(self.store.get_bytes(prefix + MANIFEST_FILE)) if MANIFEST_FILE in names else None
            with contextlib.closing(self.store.open(prefix + WEIGHTS_FILE)) as f:
                tensors = read_header(f)  # the header only: dtypes, never the weights
        except ObjectNotFound:
            raise AdapterNotFound(
                f"The model `{ref.adapter_name}` does not exist or you do not have access to it."
            ) from None
        except ValueError as e:
            raise EngineError(f"The model `{ref.adapter_name}` has unreadable adapter files: {e}", "model") from e
        problem = servable.adapter_problem(config, manifest, ref.base_name, self.max_lora_rank, tensors)
        if problem is not None:
            raise EngineError(problem.message, problem.param, "model_not_servable")

    # ------------------------------------------------------------------------------------------ forwarding

    def _unavailable(self, url: str, model: str, why: str) -> ServingUnavailable:
        if self.starting is not None and self.starting(model):
            return ServingUnavailable(f"The vLLM server for `{model}` is starting; retry shortly.", self.retry_after)
        return ServingUnavailable(
            f"The vLLM server for `{model}` ({url}) {why}; retry shortly.", self.retry_after, code="engine_unavailable"
        )

    async def _error(self, resp: httpx.Response, url: str, ref: ModelRef, public: str) -> Exception:
        """vLLM's error answer as a typed error: the client sees OpenAI's shape, never vLLM's internal names."""
        await resp.aread()
        try:
            err = resp.json().get("error") or {}
            message = str(err.get("message") or resp.text)
        except ValueError:
            message = resp.text[:500]
        message = message.replace(vllm_model_name(ref), public)
        if resp.status_code == 404 and ref.adapter_prefix is not None:
            return AdapterNotFound(f"The model `{public}` does not exist or you do not have access to it.")
        if resp.status_code in (400, 404, 413, 422):
            param = err.get("param") if isinstance(err, dict) else None
            return EngineError(message, param if isinstance(param, str) else None)
        log.warning("vLLM at %s answered %s: %s", url, resp.status_code, message)
        return self._unavailable(url, ref.base_name, f"answered {resp.status_code}")

    async def _forward(self, path: str, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        public = str(body["model"])
        url, name = await self._route(ref)
        payload = upstream_body(body, params, name)
        request = self.client.build_request("POST", url + path, json=payload)
        try:
            resp = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise self._unavailable(url, ref.base_name, "did not answer in time") from None
        except httpx.TransportError as e:
            raise self._unavailable(url, ref.base_name, f"cannot be reached ({type(e).__name__})") from None
        if resp.status_code != 200:
            try:
                raise await self._error(resp, url, ref, public)
            finally:
                await resp.aclose()
        if not body.get("stream"):
            try:
                await resp.aread()
                return _clean(resp.json(), public)
            except (httpx.HTTPError, ValueError):
                raise self._unavailable(url, ref.base_name, "broke off its answer") from None
            finally:
                await resp.aclose()
        return self._events(resp, public)

    async def _events(self, resp: httpx.Response, public: str) -> AsyncIterator[str]:
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield sse("[DONE]")
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    continue
                yield sse(_clean(obj, public) if isinstance(obj, dict) and "error" not in obj else obj)
        except httpx.HTTPError:
            log.warning("vLLM stream for %s broke off", public, exc_info=True)
            yield stream_error("The serving engine stopped while generating; retry the request.")
        finally:
            await resp.aclose()

    async def chat_completions(self, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        return await self._forward("/v1/chat/completions", ref, body, params)

    async def completions(self, ref: ModelRef, body: dict[str, Any], params: SamplingParams) -> Answer:
        return await self._forward("/v1/completions", ref, body, params)

    async def embeddings(self, ref: ModelRef, texts: list[str] | list[list[int]], truncate: bool = False) -> Embedded:
        """Refused: the vLLM servers run their models for generation; an embedding (the mean of the last hidden
        state, tunery/embeddings.py) is the embedded engine's, the one the reinforcement trainer computes too."""
        raise EngineError(
            "Embeddings are served by the embedded engine only (TUNERY_SERVING_BACKEND=embedded); this server "
            "serves its models through vLLM, for chat and completions.",
            "model",
            "embeddings_not_supported",
        )

    async def unload(self, ref: ModelRef) -> None:
        if ref.adapter_prefix is None:
            return
        self._checked.discard(ref.adapter_prefix.strip("/") + "/")
        try:
            url = self.server(ref.base_name)
        except ServingUnavailable:
            return
        name = vllm_model_name(ref)
        try:
            resp = await self.client.post(url + "/v1/unload_lora_adapter", json={"lora_name": name})
        except httpx.HTTPError as e:  # a vLLM that is down holds nothing; one restarting resolves only on request
            log.warning("could not unload %s from vLLM at %s: %s", name, url, e)
            return
        if resp.status_code not in (200, 404):
            log.warning("vLLM at %s refused to unload %s: %s %s", url, name, resp.status_code, resp.text[:200])

    def close(self) -> None:
        """Nothing to stop: the connections belong to the server's event loop and end with it."""
