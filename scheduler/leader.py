"""Leader election between scheduler replicas through a coordination.k8s.io/v1 Lease.

The replica holding the Lease ``tunery-scheduler`` (in ``TUNERY_K8S_NAMESPACE``) launches and watches runs; the
others only serve the gRPC reporting service and wait. The holder renews the Lease every third of its duration;
a Lease not renewed for its whole duration may be taken by another replica. Every write goes through the API
server's optimistic concurrency (resourceVersion), so two replicas never both win the same term. A leader that
cannot renew steps down before its Lease can expire elsewhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("tunery.scheduler.leader")

LEASE_NAME = "tunery-scheduler"


def default_identity() -> str:
    """Pod name (or host), process and a random part: unique even for two electors in one process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}_{secrets.token_hex(3)}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        identity: str | None = None,
        lease_seconds: float = 15.0,
        name: str = LEASE_NAME,
    ):
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_seconds = max(2.0, lease_seconds)
        self._leader_until = 0.0  # monotonic time until which this replica may act as leader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return time.monotonic() < self._leader_until

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.is_leader():
            self.release()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception:
                log.exception("leader election round failed")
            self._stop.wait(self.lease_seconds / 3)

    def _spec(self, acquire: bool, transitions: int) -> client.V1LeaseSpec:
        now = _now()
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=round(self.lease_seconds),
            acquire_time=now if acquire else None,
            renew_time=now,
            lease_transitions=transitions,
        )

    def try_acquire_or_renew(self) -> bool:
        """One round: create, renew or take over the Lease. Returns whether this replica leads now."""
        started = time.monotonic()
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(True, 0),
            )
            try:
                self.coord.create_namespaced_lease(self.namespace, body)
            except ApiException as e2:
                if e2.status == 409:  # another replica created it first
                    return self._lost()
                raise
            return self._won(started, "created")
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        if holder == self.identity:
            spec.renew_time = _now()
            spec.lease_duration_seconds = round(self.lease_seconds)
            lease.spec = spec
            return self._replace(lease, started, "renewed")
        if holder and not self._expired(spec):
            return self._lost()
        lease.spec = self._spec(True, (spec.lease_transitions or 0) + 1)
        return self._replace(lease, started, f"took over from {holder or 'nobody'}")

    def _expired(self, spec: Any) -> bool:
        renewed = spec.renew_time or spec.acquire_time
        if renewed is None:
            return True
        duration = spec.lease_duration_seconds or self.lease_seconds
        if renewed.tzinfo is None:
            renewed = renewed.replace(tzinfo=dt.UTC)
        return (_now() - renewed).total_seconds() > duration

    def _replace(self, lease: client.V1Lease, started: float, what: str) -> bool:
        try:
            self.coord.replace_namespaced_lease(self.name, self.namespace, lease)  # carries resourceVersion
        except ApiException as e:
            if e.status == 409:  # someone else wrote the Lease since we read it
                return self._lost()
            raise
        return self._won(started, what)

    def _won(self, started: float, what: str) -> bool:
        if not self.is_leader():
            log.info("%s leads the scheduler (lease %s)", self.identity, what)
        # Step down a little before the Lease could be taken elsewhere, counted from before the write.
        self._leader_until = started + self.lease_seconds * 0.8
        return True

    def _lost(self) -> bool:
        self._leader_until = 0.0
        return False

    def release(self) -> None:
        """Give the Lease up at shutdown so another replica takes over at once."""
        self._leader_until = 0.0
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                lease.spec.acquire_time = None
                self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            log.warning("could not release the scheduler lease: %s", e.reason)
