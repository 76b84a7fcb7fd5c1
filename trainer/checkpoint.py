"""Adapter checkpoints in the object store, each with the manifest that makes the run reproducible.

Layout of a checkpoint (``{output_prefix}/checkpoints/step-{N}/``) and of the final model
(``{output_prefix}/model/``)::

    adapter_model.safetensors   the LoRA weights (safetensors only)
    adapter_config.json         PEFT config (base_model_name_or_path = the base model's public name)
      (full fine-tuning instead: config.json, generation_config.json, model*.safetensors: the whole model)
    tokenizer.json, tokenizer_config.json, chat_template.jinja, ...
    eval_report.json            the model's eval report (tunery/evalreport.py), when the job writes them
    tunery_manifest.json        written LAST: a prefix with a manifest is a complete checkpoint

The manifest records the job, base model, step/epoch, seed, SHA-256 of each data file, resolved
hyperparameters, LoRA config, library versions, creation time, metrics and the SHA-256 of every file beside it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tunery.storage import ObjectStore

MANIFEST = "tunery_manifest.json"
MANIFEST_FORMAT = "tunery.adapter.v1"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "safetensors", "tunery")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_full_model_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """Full fine-tuning: the whole model (``config.json``, ``model*.safetensors``) and the tokenizer."""
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    if not (folder / "config.json").is_file() or not any(folder.glob("model*.safetensors")):
        raise RuntimeError("transformers did not write config.json and model.safetensors")


def save_adapter_folder(model: Any, tokenizer: Any, folder: Path, base_model: str) -> None:
    """Write the adapter (safetensors) and the tokenizer with its chat template into a local folder. Only the trained
    adapter: a DPO or KTO run continuing an ``ft:`` model also holds a frozen ``ref`` copy of it (the reference)."""
    model.save_pretrained(str(folder), safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: not part of the layout
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise RuntimeError(f"PEFT did not write {ADAPTER_WEIGHTS}")
    # The local path the trainer loaded the base model from means nothing to serving: record the public name.
    config_path = folder / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def upload_checkpoint(
    store: ObjectStore,
    prefix: str,
    model: Any,
    tokenizer: Any,
    manifest: dict[str, Any],
    base_model: str,
    full: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Save and upload one checkpoint (an adapter, or the whole model when ``full``) and ``extra_files`` (its eval
    report); the manifest goes last, with every file's SHA-256. Returns the manifest as written."""
    with tempfile.TemporaryDirectory(prefix="tunery-ckpt-") as tmp:
        folder = Path(tmp)
        if full:
            save_full_model_folder(model, tokenizer, folder)
        else:
            save_adapter_folder(model, tokenizer, folder, base_model)
        files: dict[str, str] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            _, digest = store.put_file(f"{prefix}/{rel}", path)
            files[rel] = digest
        for rel, data in sorted((extra_files or {}).items()):
            _, digest = store.put_bytes(f"{prefix}/{rel}", data)
            files[rel] = digest
        manifest = {**manifest, "files": files}
        store.put_bytes(f"{prefix}/{MANIFEST}", manifest_bytes(manifest))
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """A manifest as it is stored (sorted keys, indented, one final newline)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
