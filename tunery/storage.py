"""The object store: one small interface, with the local-folder implementation of the embedded mode.

Keys are ``/``-separated relative paths
(``files/file-abc``, ``jobs/ftjob-x/checkpoints/step-24/adapter_model.safetensors``).
Writes are atomic: an object appears whole or not at all, so a reader never sees half a file.
The production twin is ``S3ObjectStore`` (``tunery/storage_s3.py``), chosen by an ``s3://bucket/prefix`` URL.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote, unquote, urlparse

if TYPE_CHECKING:
    from tunery.settings import Settings

CHUNK = 1024 * 1024


def content_disposition(filename: str) -> str:
    """The ``Content-Disposition`` of a download named ``filename``, whatever the name holds: an ASCII fallback
    (every other character ``_``) and the exact name percent-encoded in UTF-8 (RFC 6266 ``filename*``), so no
    character of a stored name (quotes, CR/LF, non-ASCII) ever reaches a header as it is."""
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class ObjectNotFound(KeyError):
    pass


class ObjectStoreError(RuntimeError):
    """The store cannot be used as configured (no such bucket, access denied, unreachable endpoint)."""


class ObjectStore(ABC):
    """Where files, checkpoints, results and job specs live."""

    url: str
    # Whether a read waits on nothing but this machine's disk (a folder), not on a network (S3).
    local: bool = False

    @abstractmethod
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write an object from a stream of chunks; returns (bytes, sha256 hex). Atomic."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open an object for reading (a file-like object; close it)."""

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; missing objects are ignored."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under a prefix, sorted."""

    def compose(
        self, key: str, sources: builtins.list[str], on_chunk: Callable[[bytes], None] | None = None
    ) -> tuple[int, str]:
        """Write ``key`` as the concatenation of ``sources`` in order, streaming; returns (bytes, sha256).
        ``on_chunk`` sees every byte of the result in order (to compute another digest). Atomic like put_stream.
        """

        def chunks() -> Iterator[bytes]:
            for src in sources:
                for chunk in self.iter_chunks(src):
                    if on_chunk is not None:
                        on_chunk(chunk)
                    yield chunk

        return self.put_stream(key, chunks())

    def presigned_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str | None:
        """A URL that downloads the object without credentials until it expires; None where the store has none."""
        return None

    def incomplete(self, prefix: str) -> builtins.list[str]:
        """Keys under a prefix with a write in progress or left behind by a crash (temporary files, unfinished
        multipart uploads)."""
        return []

    def sweep_incomplete(self, prefix: str, older_than: float) -> int:
        """Remove what :meth:`incomplete` lists under ``prefix`` that has not been written to for ``older_than``
        seconds (the leftovers of a process killed mid-write); returns how many."""
        return 0

    def check(self) -> None:  # noqa: B027 (optional: only remote stores have something to check)
        """Raise ObjectStoreError when the store cannot be used (called once at start-up)."""

    # Convenience built on the primitives above.
    def put_bytes(self, key: str, data: bytes) -> tuple[int, str]:
        return self.put_stream(key, [data])

    def put_file(self, key: str, path: str | os.PathLike[str]) -> tuple[int, str]:
        with open(path, "rb") as f:
            return self.put_stream(key, iter(lambda: f.read(CHUNK), b""))

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        with self.open(key) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        os.replace(tmp, dest)

    def put_dir(self, prefix: str, folder: str | os.PathLike[str]) -> builtins.list[str]:
        """Upload every file under a folder; returns the keys written."""
        keys = []
        root = Path(folder)
        for p in sorted(root.rglob("*")):
            if p.is_file():
                key = f"{prefix.rstrip('/')}/{p.relative_to(root).as_posix()}"
                self.put_file(key, p)
                keys.append(key)
        return keys

    def get_dir(self, prefix: str, folder: str | os.PathLike[str]) -> builtins.list[Path]:
        """Download every object under a prefix into a folder; returns the local paths."""
        prefix = prefix.rstrip("/") + "/"
        out = []
        for key in self.list(prefix):
            dest = Path(folder) / key[len(prefix) :]
            self.get_file(key, dest)
            out.append(dest)
        return out

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key: {key!r}")
    return key


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStore):
    """Objects as files under a root folder (the embedded mode). A write is durable when it returns: the data and
    the rename that publishes it are fsynced, as S3 acknowledges only what it has stored."""

    local = True

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())  # the bytes are on disk before the name says the object exists
            os.replace(tmp, path)
            _fsync_dir(path.parent)  # and the new name itself survives a power loss
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as e:
            raise ObjectNotFound(key) from e

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as e:
            raise ObjectNotFound(key) from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _search_root(self, prefix: str) -> Path:
        """The folder holding every key that starts with ``prefix`` (keys are string prefixes, as on S3)."""
        return self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root

    def list(self, prefix: str) -> list[str]:
        search = self._search_root(prefix)
        if not search.is_dir():
            return []
        keys = []
        for p in search.rglob("*"):
            if p.is_file() and not p.name.endswith(".part"):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def incomplete(self, prefix: str) -> builtins.list[str]:
        search = self._search_root(prefix)
        if not search.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in search.rglob("*.part") if p.is_file())
        return sorted(k for k in found if k.startswith(prefix))

    def sweep_incomplete(self, prefix: str, older_than: float) -> int:
        cutoff, n = time.time() - older_than, 0
        for key in self.incomplete(prefix):
            path = self.root / key
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    n += 1
        return n

    def local_path(self, key: str) -> Path:
        """The file behind a key (local store only; lets the trainer read data without a copy)."""
        return self._path(key)


def open_store(url: str, settings: Settings | None = None) -> ObjectStore:
    """An object store from its URL: ``file:///abs/path``, a plain path, or ``s3://bucket/prefix`` (whose
    endpoint, region, credentials and retries come from the ``TUNERY_S3_*`` settings)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalObjectStore(unquote(parsed.path) if parsed.scheme else url)
    if parsed.scheme == "s3":
        from tunery.settings import get_settings
        from tunery.storage_s3 import S3ObjectStore

        return S3ObjectStore.from_url(url, settings or get_settings())
    raise ValueError(f"unsupported object store URL {url!r} (supported: file://, s3://)")


# Variables that carry object-store credentials into a process (Tunery's and boto3's default chain): a brokered
# trainer's environment has none of them (scheduler/backends.py).
STORE_CREDENTIAL_ENV = (
    "TUNERY_S3_ACCESS_KEY_ID",
    "TUNERY_S3_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)


def store_environment(settings: Settings) -> dict[str, str]:
    """The ``TUNERY_S3_*`` variables a child process (the trainer) needs to open the same store as this one."""
    if not settings.resolved_object_store.startswith("s3://"):
        return {}
    env = {
        "TUNERY_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "TUNERY_S3_REGION": settings.s3_region,
        "TUNERY_S3_ADDRESSING_STYLE": settings.s3_addressing_style,
        "TUNERY_S3_RETRY_MODE": settings.s3_retry_mode,
        "TUNERY_S3_MAX_ATTEMPTS": str(settings.s3_max_attempts),
        "TUNERY_S3_PRESIGN_SECONDS": str(settings.s3_presign_seconds),
    }
    if settings.s3_access_key_id:
        env["TUNERY_S3_ACCESS_KEY_ID"] = settings.s3_access_key_id
        env["TUNERY_S3_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env
