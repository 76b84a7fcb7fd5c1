"""The production object store: S3 or any S3-compatible store (boto3), chosen by ``s3://bucket/prefix``.

Every key lives under the URL's prefix in one bucket. Writes stream with bounded memory: a body that fits in one
part is one PUT; a larger one is an S3 multipart upload of ``part_size`` pieces (SHA-256 computed on the way),
aborted if anything fails, so an object appears whole or not at all. Reads stream in chunks. botocore retries
throttling and 5xx answers (``standard`` or ``adaptive`` mode, ``TUNERY_S3_MAX_ATTEMPTS``).

``compose`` (assembling an Upload's parts) copies the parts server-side (UploadPartCopy into a multipart upload)
when S3 allows it, every part but the last at least 5 MiB; otherwise it streams them through like the local store.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tunery.storage import CHUNK, ObjectNotFound, ObjectStore, ObjectStoreError, _check_key, content_disposition

if TYPE_CHECKING:
    from tunery.settings import Settings

log = logging.getLogger("tunery.storage")

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (all but the last)
MAX_COPY_PART = 5 * 1024**3  # S3's largest part
MAX_PARTS = 10_000
PART_SIZE = 8 * 1024 * 1024  # what put_stream holds in memory at most (one part)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _new_client(**kwargs: Any) -> Any:
    """An S3 client from one shared boto3 session: its loaded service model makes the next client ~15x cheaper.
    Creating clients is not thread-safe, using them is."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3ObjectStore(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str = "",
        region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
        addressing_style: str = "auto",
        retry_mode: str = "standard",
        max_attempts: int = 5,
        presign_seconds: int = 3600,
        part_size: int = PART_SIZE,
    ):
        if not bucket:
            raise ValueError("an s3:// object store URL needs a bucket: s3://bucket/prefix")
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes (S3's minimum part size)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.presign_seconds = presign_seconds
        self.part_size = part_size
        self.config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},  # type: ignore[typeddict-item]
            connect_timeout=10,
            read_timeout=60,
        )
        keys: dict[str, Any] = {}
        if access_key_id:  # otherwise boto3's default chain: AWS_* variables, ~/.aws, instance or pod role
            keys = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
        self.client = _new_client(endpoint_url=endpoint_url or None, config=self.config, **keys)

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> S3ObjectStore:
        parsed = urlparse(url)
        return cls(
            parsed.netloc,
            parsed.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            addressing_style=settings.s3_addressing_style,
            retry_mode=settings.s3_retry_mode,
            max_attempts=settings.s3_max_attempts,
            presign_seconds=settings.s3_presign_seconds,
        )

    # ---- keys -------------------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _list_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    # ---- the interface ----------------------------------------------------------------------------------
    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = _code(e)
            if code in _NOT_FOUND or code == "NoSuchBucket":
                raise ObjectStoreError(f"object store {self.url}: bucket {self.bucket!r} does not exist") from e
            raise ObjectStoreError(f"object store {self.url}: {code or e}") from e
        except BotoCoreError as e:
            raise ObjectStoreError(f"object store {self.url}: {e}") from e

    def create_bucket(self) -> None:
        """Create the bucket if it is missing (tests and first-time setups; production expects it to exist)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        full = self._key(key)
        digest = hashlib.sha256()
        size = 0
        buf = bytearray()
        upload_id: str | None = None
        etags: list[dict[str, Any]] = []

        def send_part() -> None:
            nonlocal upload_id
            if upload_id is None:
                upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
            n = len(etags) + 1
            r = self.client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=bytes(buf[: self.part_size])
            )
            etags.append({"PartNumber": n, "ETag": r["ETag"]})
            del buf[: self.part_size]

        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buf += chunk
                while len(buf) > self.part_size:  # keep the last piece back: it may be the (short) last part
                    send_part()
            if upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(buf))
            else:
                send_part()
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": etags}
                )
        except BaseException:
            if upload_id is not None:
                self._abort(full, upload_id)
            raise
        return size, digest.hexdigest()

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception:  # the upload stays listed by incomplete(); delete_prefix or a lifecycle rule ends it
            log.exception("could not abort the multipart upload of %s", full)

    def open(self, key: str) -> BinaryIO:
        try:
            body: BinaryIO = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return body
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFound(key) from e
            raise

    def _head(self, key: str) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return head
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise ObjectNotFound(key) from e
            raise

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> builtins.list[str]:
        keys = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._list_prefix(prefix)
        )
        for page in pages:
            keys += [self._rel(o["Key"]) for o in page.get("Contents", [])]
        return sorted(keys)

    def _multipart_uploads(self, prefix: str) -> builtins.list[tuple[str, str, datetime]]:
        """(full key, upload id, when it was initiated) of each unfinished multipart upload under ``prefix``."""
        found = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._list_prefix(prefix)
        )
        for page in pages:
            found += [(u["Key"], u["UploadId"], u["Initiated"]) for u in page.get("Uploads", [])]
        return found

    def incomplete(self, prefix: str) -> builtins.list[str]:
        return sorted(self._rel(full) for full, _, _ in self._multipart_uploads(prefix))

    def sweep_incomplete(self, prefix: str, older_than: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        stale = [(full, upload_id) for full, upload_id, started in self._multipart_uploads(prefix) if started < cutoff]
        for full, upload_id in stale:
            self._abort(full, upload_id)
        return len(stale)

    def delete_prefix(self, prefix: str) -> int:
        n = super().delete_prefix(prefix)
        for full, upload_id, _ in self._multipart_uploads(prefix):
            self._abort(full, upload_id)
        return n

    def presigned_url(self, key: str, expires_in: int | None = None, filename: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        url: str = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_in or self.presign_seconds
        )
        return url

    # ---- presigned writes: what a brokered trainer is given (scheduler/object_access.py) ----------------------
    def _presign(self, method: str, expires_in: int | None, **params: Any) -> str:
        url: str = self.client.generate_presigned_url(
            method, Params={"Bucket": self.bucket, **params}, ExpiresIn=expires_in or self.presign_seconds
        )
        return url

    def presigned_put_url(self, key: str, expires_in: int | None = None) -> str:
        """A URL that writes the object (one PUT of the whole body) without credentials until it expires."""
        return self._presign("put_object", expires_in, Key=self._key(key))

    def start_upload(self, key: str) -> str:
        """A multipart upload of ``key``; returns its upload id."""
        upload_id: str = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))["UploadId"]
        return upload_id

    def presigned_part_url(self, key: str, upload_id: str, part_number: int, expires_in: int | None = None) -> str:
        """A URL that writes part ``part_number`` of a multipart upload of ``key`` (its signature names the key)."""
        if not 1 <= part_number <= MAX_PARTS:
            raise ValueError(f"a part number is 1 to {MAX_PARTS}")
        return self._presign("upload_part", expires_in, Key=self._key(key), UploadId=upload_id, PartNumber=part_number)

    def complete_upload(self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]) -> None:
        """Complete a multipart upload from its (part number, ETag) pairs: the object appears whole."""
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self._key(key),
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._abort(self._key(key), upload_id)

    def compose(
        self, key: str, sources: builtins.list[str], on_chunk: Callable[[bytes], None] | None = None
    ) -> tuple[int, str]:
        sizes = [self.size(src) for src in sources]
        copyable = (
            0 < len(sources) <= MAX_PARTS
            and all(s >= MIN_PART for s in sizes[:-1])
            and all(0 < s <= MAX_COPY_PART for s in sizes)
        )
        if not copyable:
            return super().compose(key, sources, on_chunk)
        # The digests need the bytes: read the parts once (streaming), then let S3 copy them into place.
        digest = hashlib.sha256()
        for src in sources:
            for chunk in self.iter_chunks(src, CHUNK):
                digest.update(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        full = self._key(key)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        try:
            parts = []
            for n, src in enumerate(sources, start=1):
                r = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=n,
                    CopySource={"Bucket": self.bucket, "Key": self._key(src)},
                )
                parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort(full, upload_id)
            raise
        return sum(sizes), digest.hexdigest()
