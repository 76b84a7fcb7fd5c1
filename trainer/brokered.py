"""A brokered trainer's object store: no credentials of its own, presigned URLs from the scheduler.

With brokered object access (``TUNERY_TRAINER_OBJECT_ACCESS``, docs/security.md) the JobSpec's store is
``tunery-broker://<reporting address>/<job id>``. For each object it reads or writes, :class:`BrokeredStore` asks the
scheduler's ``TrainerObjects`` service with the run's token, which decides what the job may reach
(``scheduler/object_access.py``), and then moves the bytes itself over plain HTTP to the URL it got: a GET streams, a
write of up to one part is one PUT, a larger one a multipart upload whose parts are PUT one at a time (one part in
memory at most). Listing, sizes and deletes are answered by the service. Each URL is asked for just before it is
used, so its short life is enough; a retry asks again.

A refusal of the run token means the run is over (cancelled, or taken over): :class:`RunStopped`, as for reports.
"""

from __future__ import annotations

import builtins
import hashlib
import http.client
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, TypeVar

from tunery.jobspec import broker_url, parse_broker_url
from tunery.storage import ObjectNotFound, ObjectStore, ObjectStoreError, open_store

from .errors import RunStopped

log = logging.getLogger("tunery.trainer.store")

PART_SIZE = 8 * 1024 * 1024  # S3's parts are at least 5 MiB, but for the last
_RETRY_HTTP = {408, 429, 500, 502, 503, 504}
T = TypeVar("T")


class BrokeredStore(ObjectStore):
    def __init__(
        self,
        address: str,
        job_id: str,
        run_token: str,
        *,
        credentials: Any = None,
        part_size: int = PART_SIZE,
        attempts: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
    ):
        """``credentials``: a ``grpc.ChannelCredentials`` to dial with TLS (:mod:`tunery.grpc_tls`); None: plaintext."""
        import grpc

        from tunery.v1 import reporting_pb2, reporting_pb2_grpc

        self.url = broker_url(address, job_id)
        self.job_id = job_id
        self.part_size = part_size
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._grpc = grpc
        self._pb = reporting_pb2
        self._op = reporting_pb2.AccessRequest.Op
        self._run = reporting_pb2.RunRef(job_id=job_id, run_token=run_token)
        self._channel = (
            grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
        )
        self._stub = reporting_pb2_grpc.TrainerObjectsStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    # ---- the two channels: the broker (gRPC) and the store (HTTP, presigned) ---------------------------------
    def _ask(self, op: int, key: str, **fields: Any) -> Any:
        request = self._pb.AccessRequest(run=self._run, op=op, key=key, **fields)  # type: ignore[arg-type]
        codes = self._grpc.StatusCode
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return self._stub.Access(request, timeout=self.timeout_s, wait_for_ready=True)
            except self._grpc.RpcError as e:
                code, details = e.code(), e.details()
                if code == codes.PERMISSION_DENIED:
                    log.error("the control plane rejected this run's object access; stopping")
                    raise RunStopped("cancelled") from e
                if code == codes.NOT_FOUND:
                    raise ObjectNotFound(key) from e
                transient = code in (codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED, codes.RESOURCE_EXHAUSTED)
                if not transient or attempt == self.attempts:
                    raise ObjectStoreError(f"{self._op.Name(op)} {key!r}: {code.name}: {details}") from e
                log.warning("object access %s %r failed (%s), retrying", self._op.Name(op), key, code.name)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    def _retrying(self, key: str, fn: Callable[[], T]) -> T:
        """``fn`` (which asks for a fresh URL each time), again after a transient failure of the store."""
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    raise ObjectNotFound(key) from e
                if e.code not in _RETRY_HTTP or attempt == self.attempts:
                    raise ObjectStoreError(f"{key!r}: the object store answered HTTP {e.code}") from e
                problem = f"HTTP {e.code}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                if attempt == self.attempts:
                    raise ObjectStoreError(f"{key!r}: the object store is unreachable: {e}") from e
                problem = str(e)
            log.warning("object store: %r failed (%s), retrying", key, problem)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    def _http(self, method: str, url: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        return urllib.request.urlopen(request, timeout=self.timeout_s)  # the broker's http(s) URL

    def _put(self, op: int, key: str, body: bytes, **fields: Any) -> str:
        """PUT ``body`` to the URL of ``op``; returns the ETag the store answered."""

        def attempt() -> str:
            with self._http("PUT", self._ask(op, key, **fields).url, body) as response:
                return str(response.headers.get("ETag", ""))

        return self._retrying(key, attempt)

    # ---- the interface --------------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        try:
            response: BinaryIO = self._retrying(key, lambda: self._http("GET", self._ask(self._op.OP_READ, key).url))
        except ObjectStoreError:
            # A store whose signer may not list the bucket answers a missing key with 403, not 404.
            if not self.exists(key):
                raise ObjectNotFound(key) from None
            raise
        return response

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        buf = bytearray()
        upload_id = ""
        parts: list[Any] = []

        def send_part() -> None:
            n = len(parts) + 1
            body = bytes(buf[: self.part_size])
            etag = self._put(self._op.OP_WRITE_PART, key, body, upload_id=upload_id, part_number=n)
            parts.append(self._pb.UploadedPart(part_number=n, etag=etag))
            del buf[: self.part_size]

        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buf += chunk
                while len(buf) > self.part_size:  # keep the last piece back: it may be the (short) last part
                    if not upload_id:
                        upload_id = self._ask(self._op.OP_START_UPLOAD, key).upload_id
                    send_part()
            if not upload_id:
                self._put(self._op.OP_WRITE, key, bytes(buf))
            else:
                send_part()
                self._ask(self._op.OP_COMPLETE_UPLOAD, key, upload_id=upload_id, parts=parts)
        except BaseException:
            if upload_id:
                try:
                    self._ask(self._op.OP_ABORT_UPLOAD, key, upload_id=upload_id)
                except (Exception, RunStopped):  # the store's lifecycle rule, or the job's deletion, ends it
                    log.warning("could not abort the multipart upload of %s", key)
            raise
        return size, digest.hexdigest()

    def size(self, key: str) -> int:
        reply = self._ask(self._op.OP_STAT, key)
        if not reply.exists:
            raise ObjectNotFound(key)
        return int(reply.size)

    def exists(self, key: str) -> bool:
        return bool(self._ask(self._op.OP_STAT, key).exists)

    def delete(self, key: str) -> None:
        self._ask(self._op.OP_DELETE, key)

    def list(self, prefix: str) -> builtins.list[str]:
        return sorted(self._ask(self._op.OP_LIST, prefix).keys)


def open_trainer_store(url: str, run_token: str = "", credentials: Any = None) -> ObjectStore:
    """The store a trainer reaches at ``url``: a broker URL (:func:`tunery.jobspec.broker_url`) with the run's
    token and the reporting channel's TLS credentials, or a store of its own (file://, s3:// with TUNERY_S3_*)."""
    broker = parse_broker_url(url)
    if broker is None:
        return open_store(url)
    address, job_id = broker
    return BrokeredStore(address, job_id, run_token, credentials=credentials)
