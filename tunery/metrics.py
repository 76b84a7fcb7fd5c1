"""Prometheus metrics (``GET /metrics`` on the API and on the scheduler's HTTP side; docs/metrics.md).

Each server has its own registry (tests run several servers in one process), holding:

* HTTP: requests and their latency by method, route template and status (the API role);
* scheduler: runs started, restarts after crashes and preemptions, runs it swept, the leader flag, pass durations,
  file validations (count, bytes, seconds);
* trainer reports received over gRPC, checkpoints, trained tokens of succeeded jobs;
* the state of the metadata store, read at each scrape: jobs and files by status, runs going, the age of the oldest
  job waiting to start. Only a process that runs the scheduler reports these, and with leader election only the
  leader, so that summing over the scraped processes never counts a job twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.jobstate import WAITING, JobStatus

if TYPE_CHECKING:
    from tunery.db import Database

log = logging.getLogger("tunery.metrics")

JOB_STATUSES = tuple(s.value for s in JobStatus)
FILE_STATUSES = ("uploaded", "processed", "error")
# Request latencies: from a health check to a large upload part.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
VALIDATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """One server's metrics and their registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.http_requests = Counter(
            "tunery_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "tunery_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its body).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.grpc_requests = Counter(
            "tunery_grpc_requests", "Public gRPC API calls answered.", ["rpc", "code"], registry=r
        )
        self.grpc_seconds = Histogram(
            "tunery_grpc_request_duration_seconds",
            "Time to answer a public gRPC API call (a stream: until it ends).",
            ["rpc"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.runs_started = Counter("tunery_scheduler_runs_started", "Trainer runs launched.", registry=r)
        self.run_restarts = Counter(
            "tunery_scheduler_run_restarts",
            "Runs started again from their last checkpoint, by reason (crash or preemption).",
            ["reason"],
            registry=r,
        )
        self.runs_swept = Counter(
            "tunery_scheduler_runs_swept", "Finished runs whose leftovers were removed (Kubernetes Jobs).", registry=r
        )
        self.leader = Gauge(
            "tunery_scheduler_leader",
            "1 while this process leads the scheduler (always 1 without election).",
            registry=r,
        )
        self.pass_seconds = Histogram(
            "tunery_scheduler_pass_duration_seconds",
            "Time of one scheduler pass (claims, reaping, validation dispatch, launches).",
            registry=r,
        )
        self.validations = Counter(
            "tunery_file_validations", "Files validated, by outcome (processed or error).", ["outcome"], registry=r
        )
        self.validated_bytes = Counter("tunery_file_validated_bytes", "Bytes of files validated.", registry=r)
        self.validation_seconds = Histogram(
            "tunery_file_validation_duration_seconds",
            "Time to validate one file at upload.",
            buckets=VALIDATION_BUCKETS,
            registry=r,
        )
        self.trainer_reports = Counter(
            "tunery_trainer_reports",
            "Calls of trainers over gRPC, by kind (started, metrics, event, checkpoint, finished, objects).",
            ["kind"],
            registry=r,
        )
        self.trained_tokens = Counter("tunery_trained_tokens", "Tokens trained by succeeded jobs.", registry=r)

    def watch_state(self, db: Database, active: Callable[[], bool]) -> None:
        """Report the metadata store's state at each scrape while ``active()`` (this process schedules)."""
        self.registry.register(StateCollector(db, active))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Jobs, files and runs as the metadata store has them, read at scrape time (a few indexed counts)."""

    def __init__(self, db: Database, active: Callable[[], bool]):
        self.db = db
        self.active = active

    def describe(self) -> list[Metric]:
        return []  # read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        if not self.active():
            return
        from sqlalchemy import func, select

        from tunery.db.models import File, Job

        up = GaugeMetricFamily("tunery_metadata_store_up", "1 when the metadata store answered this scrape.")
        try:
            with self.db.session() as s:
                jobs: dict[str, int] = {
                    k: v for k, v in s.execute(select(Job.status, func.count()).group_by(Job.status))
                }
                files: dict[str, int] = {
                    k: v for k, v in s.execute(select(File.status, func.count()).group_by(File.status))
                }
                runs = s.scalar(select(func.count()).select_from(Job).where(Job.run_handle.is_not(None))) or 0
                oldest = s.scalar(select(func.min(Job.created_at)).where(Job.status.in_(WAITING)))
        except Exception:
            log.warning("metrics: the metadata store did not answer", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_status = GaugeMetricFamily("tunery_jobs", "Fine-tuning jobs by status.", labels=["status"])
        for status in sorted(set(JOB_STATUSES) | set(jobs)):
            by_status.add_metric([status], jobs.get(status, 0))
        yield by_status
        file_status = GaugeMetricFamily("tunery_files", "Files by status.", labels=["status"])
        for status in sorted(set(FILE_STATUSES) | set(files)):
            file_status.add_metric([status], files.get(status, 0))
        yield file_status
        yield GaugeMetricFamily("tunery_runs_active", "Trainer runs going (recorded on a job).", value=runs)
        yield GaugeMetricFamily(
            "tunery_queue_oldest_job_age_seconds",
            "Age of the oldest job that has not started training yet (validating_files or queued); 0 when none.",
            value=max(0.0, time.time() - oldest) if oldest else 0.0,
        )


# The methods counted by name; any other is counted as `other`, so a client cannot add series by inventing methods.
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


class HTTPMetricsMiddleware:
    """Counts each request and times it by method, status and route template. Every label comes from a closed set,
    so no request can add series: ``route_of`` gives the route template (``/v1/files/{file_id}``, never the raw
    path) or ``unmatched`` (api/routing.py), and the method is one of ``HTTP_METHODS`` or ``other``."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str]):
        self.app = app
        self.metrics = metrics
        self.route_of = route_of
        # Each label set's two series, looked up once (prometheus_client's ``labels`` checks and locks, per call).
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (method_label(scope.get("method", "")), self.route_of(scope), status)
            series = self._series.get(key)
            if series is None:  # once per label set (a closed set: see the class)
                method, route, _ = key
                series = self._series[key] = (
                    self.metrics.http_requests.labels(method, route, str(status)),
                    self.metrics.http_seconds.labels(method, route),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - start)
