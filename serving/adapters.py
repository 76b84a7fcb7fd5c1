"""Adapters pulled from the object store into a local cache folder, one folder per fine-tuned model.

A fully fine-tuned model (``config.json`` + ``model*.safetensors`` instead of an adapter) is cached the same way and
served as a model of its own.

``cache_dir/adapters/<safe name>/`` holds ``adapter_config.json``, ``adapter_model.safetensors`` and whatever
else the adapter's prefix has at its top level (tokenizer files, the trainer's manifest), never a pickle.
A download lands in a temporary folder first and is renamed into place, so a half-copied adapter is never
loaded; ``.tunery-source`` records the prefix a folder came from, so a folder from an older prefix is replaced.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path

from serving.errors import AdapterNotFound
from tunery.storage import ObjectNotFound, ObjectStore

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SOURCE_FILE = ".tunery-source"
FULL_CONFIG = "config.json"  # a fully fine-tuned model: config.json + model*.safetensors, no adapter_config.json
# Never copied: pickles (the trainer's optimizer, scheduler and RNG state, or a .bin adapter) are never loaded.
SKIPPED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

log = logging.getLogger("tunery.serving.adapters")


def is_full_model(names: set[str] | Path) -> bool:
    """Whether a folder (or the file names of a prefix) holds a whole model rather than a LoRA adapter."""
    if isinstance(names, Path):
        names = {p.name for p in names.iterdir()} if names.is_dir() else set()
    has_weights = any(n.startswith("model") and n.endswith(".safetensors") for n in names)
    return CONFIG_FILE not in names and FULL_CONFIG in names and has_weights


def _complete(names: set[str]) -> bool:
    return (CONFIG_FILE in names and WEIGHTS_FILE in names) or is_full_model(names)


def safe_adapter_name(name: str) -> str:
    """A name PEFT and the file system accept (``[A-Za-z0-9_]``), unique per model name.

    ``ft:smollm2-135m-instruct:personal:demo:AbCd1234`` ->
    ``ft_smollm2_135m_instruct_personal_demo_AbCd1234_<8 hex of sha256(name)>``.
    """
    readable = re.sub(r"[^A-Za-z0-9_]", "_", name)[:80]
    return f"{readable}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


class AdapterCache:
    """Local copies of adapters, downloaded on first use. Thread-safe (one download per name at a time)."""

    def __init__(self, store: ObjectStore, root: Path):
        self.store = store
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, safe: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(safe, threading.Lock())

    def path(self, adapter_name: str) -> Path:
        return self.root / safe_adapter_name(adapter_name)

    def fetch(self, adapter_name: str, prefix: str | None) -> Path:
        """The local folder of an adapter, downloading it from ``prefix`` unless the cache has it already."""
        if not prefix or not prefix.strip("/"):
            raise AdapterNotFound(f"The model `{adapter_name}` does not exist or you do not have access to it.")
        prefix = prefix.strip("/") + "/"
        safe = safe_adapter_name(adapter_name)
        final = self.root / safe
        with self._lock(safe):
            marker = final / SOURCE_FILE
            if marker.is_file() and marker.read_text() == prefix and _complete({p.name for p in final.iterdir()}):
                return final
            top = {key[len(prefix) :]: key for key in self.store.list(prefix) if "/" not in key[len(prefix) :]}
            if not _complete(set(top)):
                missing = CONFIG_FILE if CONFIG_FILE not in top else WEIGHTS_FILE
                # Where the store lacks it is for the operator's log, never for the client.
                log.warning("adapter %s: no %s under %s in the object store", adapter_name, missing, prefix)
                raise AdapterNotFound(f"The model `{adapter_name}` does not exist or you do not have access to it.")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{safe}."))
            try:
                for rel, key in top.items():
                    if not rel.endswith(SKIPPED_SUFFIXES) and rel != SOURCE_FILE:
                        self.store.get_file(key, tmp / rel)
                (tmp / SOURCE_FILE).write_text(prefix)
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
            except ObjectNotFound as e:
                raise AdapterNotFound(
                    f"The model `{adapter_name}` does not exist or you do not have access to it."
                ) from e
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            return final

    def remove(self, adapter_name: str) -> None:
        """Delete the local copy (a later request downloads it again, if the store still has it)."""
        safe = safe_adapter_name(adapter_name)
        with self._lock(safe):
            shutil.rmtree(self.root / safe, ignore_errors=True)
