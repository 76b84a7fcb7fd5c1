"""The trainer's gRPC client for ``tunery.v1.TrainerReporting``.

Every call goes through one background worker, in order, so a slow or unreachable control plane never
stalls an optimizer step. ``started``, ``checkpoint`` and ``finished`` wait for their reply (the run must
not go on before the control plane knows about a checkpoint); ``metrics`` and ``event`` do not.

Calls use short deadlines and a few retries; when the control plane stays unreachable a call is logged and
dropped (a lost metric must never kill a run), and later best-effort calls try only once, and are skipped
while newer reports wait behind them, until a call gets through again. ``finished`` is retried much
harder, since it is how the job ends.

Any reply with ``cancel_requested`` (or a rejection of the run token) sets ``stop_reason``; the training
loop polls it at every step boundary. ``pause_requested`` does too, with the reason ``paused``: the run writes a
resume state and exits. ``cpu_threads`` is kept as :attr:`Reporter.cpu_threads`, which the run applies at its next
step.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tunery.trainer.reporter")

# Status codes meaning "this run is not (or no longer) the job's current run": stop, do not retry.
_REJECTED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


@dataclass
class RetryPolicy:
    attempts: int
    timeout_s: float
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0


BEST_EFFORT = RetryPolicy(attempts=3, timeout_s=5.0, backoff_s=0.5)
IMPORTANT = RetryPolicy(attempts=4, timeout_s=10.0, backoff_s=1.0)
FINAL = RetryPolicy(attempts=8, timeout_s=10.0, backoff_s=1.0, max_backoff_s=15.0)
DEGRADED = RetryPolicy(attempts=1, timeout_s=2.0)


@dataclass
class _Call:
    method: str
    request: Any
    policy: RetryPolicy
    best_effort: bool
    future: Future[bool]


_STOP = object()


class Reporter:
    """Reports one run (``job_id`` + ``run_token``) to ``address``; ``address=None`` only logs."""

    def __init__(
        self,
        address: str | None,
        job_id: str,
        run_token: str,
        *,
        on_stop: Callable[[str], None] | None = None,
        policies: dict[str, RetryPolicy] | None = None,
        abort_wait: Callable[[], bool] | None = None,
        credentials: Any = None,
    ):
        """``credentials``: a ``grpc.ChannelCredentials`` to dial with TLS (:mod:`tunery.grpc_tls`); None: plaintext."""
        self.address = address or None
        self.job_id = job_id
        self.run_token = run_token
        self.stop_reason: str | None = None
        # The last step whose metrics the control plane acknowledged (reports go in order): a resume state records
        # it, so that the run resuming from that state sends the metrics this one could not (trainer/resume.py).
        self.metrics_reported_step = 0
        # The CPU threads the control plane last said this run should train with; 0: those it started with
        # (scheduler.cores: an embedded server gives its local trainers a core fewer while its chat engine answers).
        self.cpu_threads = 0
        self._on_stop = on_stop
        # Polled while a caller waits for a reply (except for Finished): True gives up waiting, so that a
        # SIGTERM during a slow Checkpoint report still stops the run promptly.
        self._abort_wait = abort_wait or (lambda: self.stop_reason is not None)
        self._policies = {"best_effort": BEST_EFFORT, "important": IMPORTANT, "final": FINAL, "degraded": DEGRADED}
        self._policies.update(policies or {})
        self._degraded = False
        self._dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._channel: Any = None
        self._stub: Any = None
        self._pb: Any = None
        if self.address:
            import grpc

            from tunery.v1 import reporting_pb2, reporting_pb2_grpc

            self._pb = reporting_pb2
            options = [
                # Reconnect quickly after an outage, so retries are not swallowed by a long backoff.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            self._channel = (
                grpc.secure_channel(self.address, credentials, options=options)
                if credentials is not None
                else grpc.insecure_channel(self.address, options=options)
            )
            self._stub = reporting_pb2_grpc.TrainerReportingStub(self._channel)
        else:
            from tunery.v1 import reporting_pb2

            self._pb = reporting_pb2
        self._worker = threading.Thread(target=self._run, name="tunery-reporter", daemon=True)
        self._worker.start()

    # ---- the calls -------------------------------------------------------------------------------------
    @property
    def pb(self) -> Any:
        return self._pb

    def run_ref(self) -> Any:
        return self._pb.RunRef(job_id=self.job_id, run_token=self.run_token)

    def started(
        self, total_steps: int, train_examples: int, tokens_per_epoch: int, hyperparameters: dict[str, Any]
    ) -> bool:
        req = self._pb.StartedRequest(
            run=self.run_ref(),
            total_steps=total_steps,
            train_examples=train_examples,
            train_tokens_per_epoch=tokens_per_epoch,
            hyperparameters_json=json.dumps(hyperparameters, sort_keys=True),
        )
        return self._submit("Started", req, "important", wait=True)

    def metrics(self, metrics: Any) -> None:
        self._submit("Metrics", self._pb.MetricsRequest(run=self.run_ref(), metrics=metrics), "best_effort")

    def event(self, level: str, message: str, data: dict[str, Any] | None = None, wait: bool = False) -> None:
        req = self._pb.EventRequest(
            run=self.run_ref(), level=level, message=message, data_json=json.dumps(data or {}, sort_keys=True)
        )
        self._submit("Event", req, "best_effort", wait=wait)

    def checkpoint(self, step: int, object_prefix: str, metrics: Any) -> bool:
        req = self._pb.CheckpointRequest(run=self.run_ref(), step=step, object_prefix=object_prefix, metrics=metrics)
        return self._submit("Checkpoint", req, "important", wait=True)

    def finished(
        self,
        succeeded: bool,
        *,
        model_prefix: str = "",
        results_key: str = "",
        trained_tokens: int = 0,
        error_code: str = "",
        error_message: str = "",
        error_param: str = "",
    ) -> bool:
        req = self._pb.FinishedRequest(
            run=self.run_ref(),
            succeeded=succeeded,
            model_prefix=model_prefix,
            results_key=results_key,
            trained_tokens=trained_tokens,
            error_code=error_code,
            error_message=error_message,
            error_param=error_param,
        )
        return self._submit("Finished", req, "final", wait=True)

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (up to ``timeout`` seconds), then close the channel."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("reporter: gave up on %d queued report(s) at exit", self._queue.qsize())
        if self._channel is not None:
            self._channel.close()

    # ---- the worker ------------------------------------------------------------------------------------
    def _submit(self, method: str, request: Any, kind: str, wait: bool = False) -> bool:
        future: Future[bool] = Future()
        if self._closed:
            log.warning("reporter: %s after close, dropped", method)
            return False
        self._queue.put(_Call(method, request, self._policies[kind], kind == "best_effort", future))
        if not wait:
            return True
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                if kind != "final" and self._abort_wait():
                    log.warning("reporter: stopped waiting for the reply to %s (the run is stopping)", method)
                    return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            call: _Call = item
            if call.best_effort and self._degraded and not self._queue.empty():
                # The control plane is not answering and more reports wait: do not let a backlog of metrics
                # delay a checkpoint or the final report. The latest metrics still get a try.
                self._dropped += 1
                if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                    log.warning("reporter: control plane unreachable, %d report(s) dropped so far", self._dropped)
                call.future.set_result(False)
                continue
            try:
                ok = self._send(call)
            except Exception:  # never let the reporter thread die
                log.exception("reporter: %s failed", call.method)
                ok = False
            if ok and call.method == "Metrics":
                self.metrics_reported_step = max(self.metrics_reported_step, int(call.request.metrics.step))
            call.future.set_result(ok)

    def _send(self, call: _Call) -> bool:
        if self._stub is None:
            log.debug("reporter (no address): %s %s", call.method, call.request)
            return True
        import grpc

        policy = self._policies["degraded"] if (call.best_effort and self._degraded) else call.policy
        delay = policy.backoff_s
        last = ""
        for attempt in range(1, policy.attempts + 1):
            try:
                reply = getattr(self._stub, call.method)(call.request, timeout=policy.timeout_s, wait_for_ready=True)
            except grpc.RpcError as e:
                code = e.code().name if hasattr(e, "code") and e.code() is not None else "UNKNOWN"
                details = e.details() if hasattr(e, "details") else ""
                last = f"{code}: {details}"
                if code in _REJECTED:
                    log.error("reporter: control plane rejected this run (%s); stopping", last)
                    self._request_stop("cancelled")
                    return False
                if attempt < policy.attempts:
                    log.warning("reporter: %s attempt %d/%d failed (%s)", call.method, attempt, policy.attempts, last)
                    time.sleep(delay)
                    delay = min(delay * 2, policy.max_backoff_s)
                continue
            self._degraded = False
            self.cpu_threads = reply.cpu_threads
            if reply.cancel_requested:
                self._request_stop("cancelled")
            elif reply.pause_requested:
                self._request_stop("paused")
            return True
        self._degraded = True
        log.error("reporter: %s not delivered after %d attempt(s) (%s)", call.method, policy.attempts, last)
        return False

    def _request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("reporter: the control plane asked this run to stop (%s)", reason)
            if self._on_stop is not None:
                self._on_stop(reason)
