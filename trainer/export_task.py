"""An export run (a job of kind ``export``, docs/exports.md): an existing ``ft:`` model or checkpoint model merged
into its base and stored as one downloadable file.

    spec -> the model's files (adapter, or a full fine-tune's weights) from the object store, its manifest first
         -> trainer/export.py's merge_model (LoRA folded into the base, or the full model re-saved), in ``dtype``
         -> safetensors: the merged folder as one .tar.gz (its top folder the model's safe name)
            gguf: trainer/export.py's write_gguf (Llama only; otherwise ``unsupported_architecture``)
         -> jobs/<export id>/export/model.tar.gz | model.gguf (tunery/layout.py) -> Finished

The server registers that object as the export's result file (purpose ``fine-tune-results``); it accepts no other
key. ``python -m trainer`` dispatches here on the spec's ``task``.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tunery import layout
from tunery.archive import GZIP_LEVEL, safe_name
from tunery.exports import ExportOptions
from tunery.jobspec import JobSpec
from tunery.storage import ObjectStore, open_store

from .base import StopSignal
from .errors import TrainerError
from .evaluate import model_manifest
from .export import merge_model, write_gguf
from .loading import fetch_model_files
from .reporter import Reporter

log = logging.getLogger("tunery.trainer.export")


@dataclass
class ExportResult:
    key: str
    bytes: int
    seconds: float


def pack_folder(folder: Path, top: str, out: Path) -> Path:
    """``folder``'s files as one ``.tar.gz`` under the top folder ``top`` (weights barely compress: the fastest
    level, as a checkpoint's archive, tunery/archive.py)."""
    with tarfile.open(out, "w:gz", compresslevel=GZIP_LEVEL) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=f"{top}/{path.relative_to(folder).as_posix()}", recursive=False)
    return out


def export(
    spec: JobSpec, reporter: Reporter, stop: StopSignal | None = None, store: ObjectStore | None = None
) -> ExportResult:
    """Merge ``spec.fine_tuned_model`` into its base and store it as ``spec.export`` says; raises TrainerError
    (``export_error``, ``unsupported_architecture``, ``model_not_available``) or RunStopped when it does not
    succeed."""
    started = time.monotonic()
    stop = stop or StopSignal()
    model_prefix = spec.init_adapter_prefix
    if model_prefix is None:
        raise TrainerError("an export needs the model's files (init_adapter_prefix)", param="model")
    options = spec.export or ExportOptions()
    store = store or open_store(spec.object_store)
    manifest = model_manifest(store, model_prefix)
    name = safe_name(spec.fine_tuned_model)
    what = f"GGUF ({options.outtype()})" if options.format == "gguf" else f"safetensors ({options.dtype})"
    reporter.event(
        "info",
        f"Exporting {spec.fine_tuned_model} (step {manifest.get('step')}) merged into {spec.base_model} as {what}",
        {"model": spec.fine_tuned_model, **options.model_dump()},
    )
    key = layout.export_key(spec.output_prefix, options.format)
    with tempfile.TemporaryDirectory(prefix="tunery-export-") as workdir:
        work = Path(workdir)
        checkpoint = fetch_model_files(store, model_prefix, work / "checkpoint")
        stop.check()
        merged = merge_model(Path(spec.base_model_path), checkpoint, work / name, options.dtype)
        stop.check()
        if options.format == "gguf":
            result = write_gguf(merged, work / f"{name}.gguf", options.outtype())
        else:
            result = pack_folder(merged, name, work / f"{name}.tar.gz")
        stop.check()
        size, _ = store.put_file(key, result)
    log.info("export of %s written to %s (%d bytes)", spec.fine_tuned_model, key, size)
    return ExportResult(key=key, bytes=size, seconds=time.monotonic() - started)
