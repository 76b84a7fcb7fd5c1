"""A checkpoint as one ``.tar.gz`` (take the model home): the files its manifest lists, the manifest itself and the
eval report when there is one, under one top folder, streamed straight from the object store.

Memory stays bounded whatever the model's size: each object is read in chunks (``CHUNK``), each chunk goes through
the tar framing and gzip and out, and nothing is held but one chunk and the compressor's window. The tar format is
written here (a PAX header per file, the data, the padding, the end blocks) rather than by ``tarfile``, which copies
a whole member before its caller sees a byte of it.

The manifest (``tunery_manifest.json``, written last by the trainer: trainer/checkpoint.py) lists the SHA-256 of
every file beside it. Before the first byte goes out, :func:`checkpoint_entries` checks that the manifest is there,
that it lists the files and that each exists; while streaming, each file's bytes are hashed and compared with the
manifest, and a file that does not match ends the stream there (the archive is then truncated, never wrong: its
gzip and tar ends are missing, so no tool reads it as whole). The manifest inside the archive carries the hashes,
so whoever unpacks it can check every file again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tunery.evalreport import REPORT_FILE
from tunery.storage import CHUNK, ObjectNotFound, ObjectStore

log = logging.getLogger("tunery.archive")

MANIFEST = "tunery_manifest.json"  # trainer/checkpoint.py's MANIFEST (the trainer's module is not imported here)
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
# Weights barely compress: the fastest level keeps a multi-gigabyte full model from being bound by the compressor.
GZIP_LEVEL = 1
MAX_MANIFEST_BYTES = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointIncomplete(Exception):
    """The prefix holds no complete checkpoint: no manifest, or one that does not list its files."""


class CheckpointDamaged(Exception):
    """A file of a complete checkpoint is missing from the store, or its bytes are not those its manifest hashed."""


@dataclass(frozen=True)
class ArchiveEntry:
    """One file of the archive: its path under the top folder, its object key and size, and the SHA-256 its bytes
    must have (None for the manifest itself)."""

    name: str
    key: str
    size: int
    sha256: str | None


def safe_name(name: str) -> str:
    """``name`` in characters any file system and shell take as they are (``ft:base:org:x:job`` ->
    ``ft_base_org_x_job``): the archive's top folder and file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return safe or "model"


def _relative(path: object) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise CheckpointIncomplete(f"its manifest lists a file path that is not relative: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise CheckpointIncomplete(f"its manifest lists a file path that is not relative: {path!r}")
    return path


def checkpoint_entries(store: ObjectStore, prefix: str) -> list[ArchiveEntry]:
    """The files of the complete checkpoint under ``prefix``, the manifest's order, then the manifest and the eval
    report (when present). Raises :class:`CheckpointIncomplete` without a manifest that lists them, and
    :class:`CheckpointDamaged` when one it lists is missing from the store."""
    prefix = prefix.rstrip("/") + "/"
    try:
        manifest_size = store.size(prefix + MANIFEST)
    except ObjectNotFound:
        raise CheckpointIncomplete(f"it has no {MANIFEST} (the manifest the trainer writes last)") from None
    if manifest_size > MAX_MANIFEST_BYTES:
        raise CheckpointIncomplete(f"its {MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(store.get_bytes(prefix + MANIFEST))
    except ValueError:
        raise CheckpointIncomplete(f"its {MANIFEST} is not JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise CheckpointIncomplete(f"its {MANIFEST} lists no files")
    entries = []
    for path, digest in files.items():
        rel = _relative(path)
        if rel == MANIFEST:
            continue  # added last, below
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise CheckpointIncomplete(f"its {MANIFEST} has no SHA-256 for {rel}")
        try:
            size = store.size(prefix + rel)
        except ObjectNotFound:
            raise CheckpointDamaged(f"{rel}, listed by its manifest, is missing from the object store") from None
        entries.append(ArchiveEntry(rel, prefix + rel, size, digest))
    entries.append(ArchiveEntry(MANIFEST, prefix + MANIFEST, manifest_size, None))
    if REPORT_FILE not in files:  # a model whose manifest does not list its report (a gate's failed final model)
        with contextlib.suppress(ObjectNotFound):
            key = prefix + REPORT_FILE  # written before the manifest, which lists its hash when it can
            entries.append(ArchiveEntry(REPORT_FILE, key, store.size(key), None))
    return entries


def _header(name: str, size: int, mtime: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = (0, mtime) if directory else (size, mtime)
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _tar_stream(store: ObjectStore, top: str, entries: Iterable[ArchiveEntry], mtime: int) -> Iterator[bytes]:
    """The uncompressed tar: the top folder, then each entry's header, bytes (checked) and padding, then the end."""
    written = 0

    def out(data: bytes) -> bytes:
        nonlocal written
        written += len(data)
        return data

    yield out(_header(f"{top}/", 0, mtime, directory=True))
    for e in entries:
        yield out(_header(f"{top}/{e.name}", e.size, mtime))
        digest, size = hashlib.sha256(), 0
        for chunk in store.iter_chunks(e.key, CHUNK):
            size += len(chunk)
            if size > e.size:
                break
            digest.update(chunk)
            yield out(chunk)
        if size != e.size or (e.sha256 is not None and digest.hexdigest() != e.sha256):
            log.error("archive of %s: %s changed in the object store or does not match its manifest", top, e.key)
            raise CheckpointDamaged(f"{e.name} is not the file its manifest lists (size or SHA-256)")
        if e.size % BLOCK:
            yield out(b"\0" * (BLOCK - e.size % BLOCK))
    end = 2 * BLOCK
    yield out(b"\0" * (end + (-(written + end) % RECORD)))


def archive_stream(store: ObjectStore, top: str, entries: Iterable[ArchiveEntry], mtime: int) -> Iterator[bytes]:
    """The ``.tar.gz`` of ``entries`` under the folder ``top``, in chunks, each file read from the store in chunks;
    every file's time is ``mtime``, so the same checkpoint always gives the same bytes."""
    gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for data in _tar_stream(store, top, entries, mtime):
        if packed := gz.compress(data):
            yield packed
    yield gz.flush()


def verify_archive(path: str) -> list[str]:
    """Read a downloaded archive once (streamed, as written) and check every file its manifest lists against the
    manifest's SHA-256; returns the problems (none: every file is the trainer's). A cut or corrupt archive raises
    (``EOFError``, ``OSError``, ``tarfile.TarError``)."""
    seen: dict[str, str] = {}
    tops: set[str] = set()
    manifest: object = None
    with gzip.open(path, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            top, _, name = member.name.removeprefix("./").partition("/")
            tops.add(top if name else "")  # "": a file outside any folder
            name = name or top
            f = tar.extractfile(member)
            assert f is not None  # a regular file
            if name == MANIFEST:
                manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
                continue
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
            seen[name] = digest.hexdigest()
        while gz.read(CHUNK):  # to gzip's end: a cut archive raises EOFError here, even past the tar's last file
            pass
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return [f"no {MANIFEST} listing the files"]
    if len(tops) != 1 or "" in tops:  # what `tunery models download` writes: one folder named after the model
        return [f"the files are not in one top folder (found: {', '.join(sorted(t or '.' for t in tops))})"]
    problems = [f"{name}: missing" for name in files if name not in seen]
    problems += [
        f"{name}: SHA-256 differs from the manifest's" for name in files if seen.get(name, files[name]) != files[name]
    ]
    return problems
