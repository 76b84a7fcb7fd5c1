"""Tunery's LoRA resolver, running inside vLLM: adapters come from the object store, never from a shared disk.

vLLM asks its LoRA resolvers for any model name it does not hold (with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``),
under a per-name lock, and loads what they return. The API names a fine-tuned model by its adapter's object-store
prefix (``jobs/ftjob-x/model``, ``jobs/ftjob-x/checkpoints/step-24``); this resolver accepts only names of that
shape, downloads the adapter's top-level files (safetensors and JSON; never a pickle) from the store into
``TUNERY_VLLM_ADAPTER_DIR`` (a download lands in a temporary folder and is renamed into place), and hands vLLM that
folder. vLLM reloads an adapter it evicted from the same folder.

It reads the store from the same variables as the trainer: ``TUNERY_OBJECT_STORE`` (``s3://bucket/prefix`` or a
folder) and ``TUNERY_S3_*``. Loaded by ``python -m serving.vllm_server`` (or as the ``vllm.general_plugins`` entry
point ``tunery`` where Tunery is installed into vLLM's environment). Imports only the standard library, vLLM and
Tunery's storage: it runs in vLLM's environment, not Tunery's.

vLLM runs ``vllm.general_plugins`` entry points in each of its processes (its CPU backend spawns its workers): the
``tunery`` one (:func:`general_plugin`) installs the faster CPU multi-LoRA ops (serving/vllm_cpu_lora.py) there.
Tunery is not installed into vLLM's environment, so :func:`write_plugin_metadata` writes the two files that declare
the entry point beside the packages on vLLM's ``PYTHONPATH`` (``importlib.metadata`` finds them there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Any

# Under vLLM's logger, so it lands in vLLM's log (the tests look for it there).
log = logging.getLogger("vllm.tunery.resolver")

RESOLVER_NAME = "tunery"
# The only names resolved: a job's final model or one of its checkpoints (no "..", no absolute paths).
ADAPTER_NAME = re.compile(r"jobs/ftjob-[A-Za-z0-9_-]{1,64}/(model|checkpoints/step-[0-9]{1,12})")


def make_resolver(store: Any, root: Path) -> Any:
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    from serving.adapters import AdapterCache, is_full_model
    from serving.errors import AdapterNotFound

    class TuneryResolver(LoRAResolver):  # type: ignore[misc]
        def __init__(self) -> None:
            self.cache = AdapterCache(store, root)

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            if not ADAPTER_NAME.fullmatch(lora_name):
                return None
            try:
                path = await asyncio.to_thread(self.cache.fetch, lora_name, lora_name + "/")
            except AdapterNotFound:
                log.info("no adapter under %s in the object store", lora_name)
                return None
            if is_full_model(path):
                return None
            log.info("fetched adapter %s from the object store into %s", lora_name, path)
            # vLLM sets the id; the name it answers to stays the prefix.
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

        def forget(self, lora_name: str) -> None:
            """Drop the local copy of an adapter vLLM unloaded (its model was deleted)."""
            if ADAPTER_NAME.fullmatch(lora_name):
                self.cache.remove(lora_name)
                log.info("removed the local copy of adapter %s", lora_name)

    return TuneryResolver()


def install_unload_hook() -> bool:
    """vLLM's ``/v1/unload_lora_adapter`` (which Tunery calls when a fine-tuned model is deleted) forgets the name
    but leaves the adapter's weights in the engine's LoRA slots and its folder in this resolver's cache, held until
    evicted. Wrap it: after a successful unload, remove the adapter from the engine too and drop its local copy, so
    a deleted model frees memory and disk at once. Idempotent."""
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    original = OpenAIServingModels.unload_lora_adapter
    if getattr(original, "tunery", False):
        return True

    async def unload_lora_adapter(self: Any, request: Any) -> Any:
        lora = self.lora_requests.get(request.lora_name)
        result = await original(self, request)
        if isinstance(result, str) and lora is not None:  # a success message; an error is an ErrorResponse
            try:
                await self.engine_client.remove_lora(lora.lora_int_id)
                log.info("removed LoRA adapter %s from the engine", request.lora_name)
            except Exception:
                log.warning("could not remove LoRA adapter %s from the engine", request.lora_name, exc_info=True)
            for resolver in self.lora_resolvers:
                forget = getattr(resolver, "forget", None)
                if forget is not None:
                    await asyncio.to_thread(forget, request.lora_name)
        return result

    unload_lora_adapter.tunery = True  # type: ignore[attr-defined]
    OpenAIServingModels.unload_lora_adapter = unload_lora_adapter
    return True


def register() -> None:
    """Register the resolver with vLLM (idempotent; vLLM may call general plugins in several processes)."""
    from vllm.lora.resolver import LoRAResolverRegistry

    if RESOLVER_NAME in LoRAResolverRegistry.get_supported_resolvers():
        return
    url = os.environ.get("TUNERY_OBJECT_STORE", "")  # the store itself, not the embedded default under a data dir
    if not url:
        log.warning("TUNERY_OBJECT_STORE is not set: Tunery's LoRA resolver is off")
        return
    from tunery.settings import Settings
    from tunery.storage import open_store

    settings = Settings()
    store = open_store(url, settings)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, make_resolver(store, settings.vllm_adapter_dir))
    log.info("Tunery LoRA resolver: adapters from %s, cached in %s", url, settings.vllm_adapter_dir)


PLUGIN_DIST = "tunery_vllm_plugin-0.1.0.dist-info"


def general_plugin() -> None:
    """The ``vllm.general_plugins`` entry point, run in every vLLM process: the CPU multi-LoRA ops."""
    from serving.vllm_cpu_lora import patch

    patch()


def write_plugin_metadata(folder: Path) -> Path:
    """Declare :func:`general_plugin` as an entry point of a distribution in ``folder`` (a PYTHONPATH entry)."""
    dist = Path(folder) / PLUGIN_DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tunery-vllm-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[vllm.general_plugins]\ntunery = serving.vllm_plugin:general_plugin\n")
    return dist
