"""The Kubernetes scheduler backend: one batch/v1 Job per trainer run (official ``kubernetes`` client).

A run is a Job named ``tunery-<job id>-<run>`` in ``TUNERY_K8S_NAMESPACE``, labelled ``tunery.dev/job-id`` and
``tunery.dev/run``, with ``backoffLimit: 0`` (the scheduler owns retries) and ``restartPolicy: Never``. Its pod runs
``<TUNERY_K8S_TRAINER_COMMAND> --spec <object-store-url>#<key>``: the JobSpec is passed by reference. Several GPUs
run under ``torchrun`` in one pod; several nodes (``TUNERY_K8S_NODES_PER_JOB`` > 1) run as an Indexed Job plus a
headless Service, on servers that support Indexed Jobs (1.22 and later; older ones get a clear job error).

The backend watches its runs by listing Jobs and pods with the ``tunery.dev/job-id`` label (one list of each per
sync interval, whatever the number of runs; nothing kept in memory is needed, so a restarted scheduler picks up
where it was and adopts the Jobs it finds). Pending reasons (unschedulable, image pull errors) become job events,
once each; a pod that fails, is evicted or disappears without a cancel is a crash.

The manifests and run handles are built in :mod:`scheduler.k8s_manifests`.
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from scheduler.backends import Backend, LaunchRefused, RunEvent, RunStatus
from scheduler.k8s_manifests import (
    LABEL_JOB,
    TrainerRuntime,
    headless_service_manifest,
    job_manifest,
    make_handle,
    owner_references,
    parse_handle,
    run_token_secret_manifest,
    run_token_secret_name,
)
from tunery.jobstate import ErrorCode
from tunery.settings import Settings

log = logging.getLogger("tunery.scheduler.k8s")

# Indexed Jobs (completionMode) are beta and on by default from 1.22; 1.20 drops the field silently.
INDEXED_JOB_MIN_VERSION = (1, 22)
# Waiting reasons of a container that mean it will not start by itself.
STUCK_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
}


def _run_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def server_version(version: Any) -> tuple[int, int]:
    """(major, minor) of a VersionInfo (minor may read "20+" on managed clusters)."""
    digits = "".join(ch for ch in str(version.minor) if ch.isdigit())
    return int(version.major), int(digits or 0)


# The backend -----------------------------------------------------------------------------------------------
def api_client(settings: Settings) -> client.ApiClient:
    """A client from TUNERY_K8S_KUBECONFIG, or the in-cluster service account when it is empty."""
    if settings.k8s_kubeconfig:
        return config.new_client_from_config(config_file=settings.k8s_kubeconfig)
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


@dataclass
class _Snapshot:
    at: float
    jobs: dict[str, Any]  # name -> V1Job
    pods: dict[str, list[Any]]  # job name -> pods


class KubernetesBackend(Backend):
    adopts_runs = True

    def __init__(self, settings: Settings, api: client.ApiClient | None = None, sync_seconds: float = 1.0):
        self.settings = settings
        self.namespace = settings.k8s_namespace
        self.api = api or api_client(settings)
        # Manifests are plain dicts, which the client sends as they are (its stubs want model objects).
        self.batch: Any = client.BatchV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.sync_seconds = sync_seconds
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None
        self._created: dict[str, float] = {}  # job name -> when this process created it
        self._logs: dict[str, Path] = {}  # handle -> local log file (filled from the pod's log at the end)
        self._noted: set[str] = set()  # events already reported (pod/reason)
        self._seen_pods: dict[str, set[str]] = {}  # job name -> pods seen running or pending
        self._version: tuple[int, int] | None = None

    def runtime(self) -> dict[str, Any] | None:
        return TrainerRuntime.from_settings(self.settings).model_dump()

    def gpus_per_run(self, runtime: dict[str, Any] | None = None) -> int:
        return self._runtime(runtime).gpus_per_run

    def _runtime(self, runtime: dict[str, Any] | None) -> TrainerRuntime:
        """A job's runtime; a job queued before runtimes were stored runs with the settings'."""
        return TrainerRuntime.model_validate(runtime) if runtime else TrainerRuntime.from_settings(self.settings)

    def server_version(self) -> tuple[int, int]:
        if self._version is None:
            self._version = server_version(client.VersionApi(self.api).get_code())
        return self._version

    # Launch ------------------------------------------------------------------------------------------
    def launch(
        self,
        job_id: str,
        spec_ref: str,
        log_path: Path,
        runtime: dict[str, Any] | None = None,
        run_token: str = "",
        secrets: dict[str, str] | None = None,
    ) -> str:
        rt = self._runtime(runtime)
        if not rt.image:
            raise LaunchRefused(
                "No trainer image is configured: set TUNERY_K8S_TRAINER_IMAGE.", code=ErrorCode.server_error
            )
        nodes = rt.nodes
        if nodes > 1 and self.server_version() < INDEXED_JOB_MIN_VERSION:
            major, minor = self.server_version()
            raise LaunchRefused(
                f"Multi-node runs (TUNERY_K8S_NODES_PER_JOB={nodes}) need Indexed Jobs, Kubernetes "
                f"{INDEXED_JOB_MIN_VERSION[0]}.{INDEXED_JOB_MIN_VERSION[1]} or later; this cluster runs "
                f"{major}.{minor}.",
                code=ErrorCode.unsupported_cluster,
            )
        secrets = secrets or {}
        manifest = job_manifest(
            self.settings, job_id=job_id, run=_run_id(), spec_ref=spec_ref, runtime=rt, secret_env=sorted(secrets)
        )
        name = manifest["metadata"]["name"]
        secret = run_token_secret_manifest(manifest, run_token, secrets)
        try:  # the token's Secret first: the pods read it as they start
            self.core.create_namespaced_secret(self.namespace, secret)
        except ApiException as e:
            raise LaunchRefused(
                f"Kubernetes refused the run's token Secret: {_api_message(e)}", code=ErrorCode.server_error
            ) from e
        try:
            created = self.batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as e:
            self._delete_token(name)
            raise LaunchRefused(f"Kubernetes refused the Job: {_api_message(e)}", code=ErrorCode.server_error) from e
        try:  # from now on the Secret goes with its Job (the garbage collector); _delete removes it too
            self.core.patch_namespaced_secret(
                secret["metadata"]["name"],
                self.namespace,
                {"metadata": {"ownerReferences": owner_references(name, created.metadata.uid)}},
            )
        except ApiException as e:
            log.warning("could not make Job %s the owner of its token Secret: %s", name, _api_message(e))
        if nodes > 1:
            try:
                self.core.create_namespaced_service(
                    self.namespace, headless_service_manifest(manifest, created.metadata.uid)
                )
            except ApiException as e:
                self._delete(name)
                raise LaunchRefused(
                    f"Kubernetes refused the Service: {_api_message(e)}", code=ErrorCode.server_error
                ) from e
        handle = make_handle(self.namespace, name)
        with self._lock:
            self._created[name] = time.monotonic()
            self._logs[handle] = log_path
        log.info("created Job %s/%s for %s", self.namespace, name, job_id)
        return handle

    # Watch -------------------------------------------------------------------------------------------
    def _snapshot(self, force: bool = False) -> _Snapshot:
        with self._lock:
            snap = self._snap
        if snap is not None and not force and time.monotonic() - snap.at < self.sync_seconds:
            return snap
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=LABEL_JOB).items
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=LABEL_JOB).items
        by_job: dict[str, list[Any]] = {}
        for pod in pods:
            owner = (pod.metadata.labels or {}).get("job-name")
            if owner:
                by_job.setdefault(owner, []).append(pod)
        snap = _Snapshot(time.monotonic(), {j.metadata.name: j for j in jobs}, by_job)
        with self._lock:
            self._snap = snap
        return snap

    def status(self, handle: str) -> RunStatus:
        try:
            ns, name = parse_handle(handle)
        except ValueError:  # left by another backend (the server ran with the local runner before)
            return RunStatus(running=False, crashed=True, error="The run was started by another scheduler backend.")
        snap = self._snapshot()
        job = snap.jobs.get(name)
        if job is None:
            with self._lock:
                created = self._created.get(name)
            if created is not None and time.monotonic() - created < 30:
                return RunStatus(running=True)  # not in the list yet
            if self._exists(name):
                return RunStatus(running=True)
            return self._ended(
                handle,
                RunStatus(
                    running=False,
                    crashed=True,
                    error=f"The Kubernetes Job {ns}/{name} was deleted before the run finished.",
                ),
            )
        pods = snap.pods.get(name, [])
        events = self._pod_events(name, pods)
        if not pods:
            events += self._job_events(job)
        seen = self._seen_pods.setdefault(name, set())
        seen.update(p.metadata.name for p in pods if p.metadata.deletion_timestamp is None)
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
        if "Complete" in conditions:
            return self._ended(handle, RunStatus(running=False, exit_code=0, events=events), pods)
        failed_pod = next((p for p in pods if p.status.phase == "Failed"), None)
        if failed_pod is not None or "Failed" in conditions:
            return self._ended(handle, self._failure(name, failed_pod, conditions.get("Failed"), events), pods)
        # A pod that was there and is gone (or going) while the Job still runs: deleted without a cancel.
        live = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}
        lost = sorted(seen - live)
        if lost:
            events.append(RunEvent(f"Pod {lost[0]} of the run was deleted", level="error"))
            return self._ended(
                handle,
                RunStatus(
                    running=False,
                    crashed=True,
                    error=f"The trainer pod {lost[0]} was deleted before the run finished (a lost pod).",
                    events=events,
                ),
                pods,
            )
        return RunStatus(running=True, events=events)

    def _exists(self, name: str) -> bool:
        try:
            self.batch.read_namespaced_job(name, self.namespace)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    def _pod_events(self, name: str, pods: list[Any]) -> list[RunEvent]:
        """Why pods of the run wait: unschedulable, image pull errors; each reason once per pod."""
        out = []
        for pod in pods:
            pname = pod.metadata.name
            if pod.status.phase not in (None, "Pending"):
                continue
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                    out += self._note(pname, "Unschedulable", f"Pod {pname} is unschedulable: {cond.message}")
            for cs in pod.status.container_statuses or []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is not None and waiting.reason in STUCK_REASONS:
                    key = "ImagePull" if "Image" in waiting.reason else waiting.reason
                    out += self._note(
                        pname, key, f"Pod {pname} cannot start its container: {waiting.reason}: {waiting.message or ''}"
                    )
        return out

    def _job_events(self, job: Any) -> list[RunEvent]:
        """A Job without pods: the Job controller's own events say why it cannot create one (a missing priority
        class or service account, a quota of the namespace, ...)."""
        name = job.metadata.name
        try:
            events = self.core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.kind=Job,involvedObject.name={name}"
            ).items
        except ApiException as e:
            log.debug("cannot list the events of Job %s: %s", name, e.reason)
            return []
        out = []
        for ev in events:
            if ev.reason == "FailedCreate" and ev.involved_object.uid == job.metadata.uid:
                out += self._note(name, "FailedCreate", f"Kubernetes cannot create the trainer pod: {ev.message}")
        return out

    def _note(self, pod: str, reason: str, message: str) -> list[RunEvent]:
        key = f"{pod}/{reason}"
        with self._lock:
            if key in self._noted:
                return []
            self._noted.add(key)
        return [RunEvent(message.rstrip(": "), level="warn", data={"pod": pod, "reason": reason})]

    def _failure(self, name: str, pod: Any, condition: Any, events: list[RunEvent]) -> RunStatus:
        if pod is None:
            reason = condition.reason if condition is not None else "Failed"
            # The cluster's own words (nodes, quotas, other workloads) go to the operator's log, not to the client.
            log.warning("Kubernetes Job %s failed: %s %s", name, reason, condition.message if condition else "")
            return RunStatus(
                running=False, crashed=True, error=f"The trainer's Kubernetes Job failed ({reason}).", events=events
            )
        pname = pod.metadata.name
        if pod.status.reason == "Evicted":
            log.warning("trainer pod %s was evicted: %s", pname, pod.status.message or "no reason given")
            events.append(RunEvent(f"Pod {pname} was evicted by Kubernetes", level="error"))
            return RunStatus(running=False, crashed=True, error="The trainer's pod was evicted.", events=events)
        code: int | None = None
        reason = pod.status.reason or ""
        for cs in pod.status.container_statuses or []:
            term = cs.state.terminated if cs.state else None
            if term is not None:
                code, reason = term.exit_code, term.reason or reason
        described = f"exit code {code}" if code is not None else "no exit code"
        if code is not None and code > 128:
            described += f", killed by signal {code - 128}"
        events.append(RunEvent(f"Pod {pname} failed ({reason or 'Error'}, {described})", level="error"))
        # Exit codes 137/143 without a Finished report: killed from outside (OOM, node loss): a crash.
        return RunStatus(running=False, exit_code=code, crashed=code is None or code > 128, events=events)

    def _ended(self, handle: str, st: RunStatus, pods: list[Any] | None = None) -> RunStatus:
        """A run that is over: copy its pod's log to the local log file (best effort) for the job's record."""
        with self._lock:
            log_path = self._logs.pop(handle, None)
        if log_path is not None and pods:
            try:
                text = self.core.read_namespaced_pod_log(
                    pods[0].metadata.name, self.namespace, tail_lines=500, _request_timeout=5
                )
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log_path.write_text(text)
            except Exception as e:  # no log endpoint (the test kubelet has none), node gone, ...
                log.debug("no log for %s: %s", handle, e)
        return st

    # Stop --------------------------------------------------------------------------------------------
    def cancel(self, handle: str) -> None:
        try:
            _, name = parse_handle(handle)
        except ValueError:
            return  # a handle of another backend (e.g. left by the local runner)
        self._delete(name)

    def _delete(self, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(
                name,
                self.namespace,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
            log.info("deleted Job %s/%s", self.namespace, name)
        except ApiException as e:
            if e.status != 404:
                raise
        self._delete_token(name)

    def _delete_token(self, name: str) -> None:
        """The run's token Secret (its Job owns it, but a Job deleted before it became the owner would leave it)."""
        try:
            self.core.delete_namespaced_secret(run_token_secret_name(name), self.namespace)
        except ApiException as e:
            if e.status != 404:
                log.warning("could not delete the token Secret of Job %s: %s", name, _api_message(e))

    def sweep(self, active: set[str]) -> int:
        """Delete the Jobs (with their pods) of runs that finished over TUNERY_K8S_FINISHED_JOB_TTL_SECONDS ago.
        The scheduler does this itself rather than through ``ttlSecondsAfterFinished``, which 1.20 servers drop,
        and never deletes a Job whose run is still recorded on a job (its outcome not taken in yet)."""
        ttl = self.settings.k8s_finished_job_ttl_seconds
        if ttl < 0:
            return 0
        swept = 0
        at = datetime.now(UTC)
        for name, job in self._snapshot().jobs.items():
            if job.metadata.deletion_timestamp is not None or make_handle(self.namespace, name) in active:
                continue
            finished = finished_at(job)
            if finished is not None and (at - finished).total_seconds() >= ttl:
                log.info(
                    "deleting the finished Job %s/%s (TUNERY_K8S_FINISHED_JOB_TTL_SECONDS=%d)",
                    self.namespace,
                    name,
                    ttl,
                )
                self._delete(name)
                swept += 1
                with self._lock:
                    self._seen_pods.pop(name, None)
        return swept

    def adopt(self, job_id: str, handle: str | None) -> str | None:
        """The run of ``job_id`` left by an earlier scheduler process: its handle if its Job still exists."""
        snap = self._snapshot(force=True)
        if handle:
            try:
                _, name = parse_handle(handle)
            except ValueError:
                name = ""
            if name in snap.jobs:
                return make_handle(self.namespace, name)
        # No handle recorded (the scheduler stopped between creating the Job and recording it): find it by label.
        mine = [
            j
            for j in snap.jobs.values()
            if (j.metadata.labels or {}).get(LABEL_JOB) == job_id and j.metadata.deletion_timestamp is None
        ]
        if not mine:
            return None
        newest = max(mine, key=lambda j: j.metadata.creation_timestamp)
        return make_handle(self.namespace, newest.metadata.name)

    def close(self) -> None:
        """Runs outlive the scheduler: a restarted (or newly elected) scheduler adopts them."""
        self.api.close()


def finished_at(job: Any) -> datetime | None:
    """When a Job completed or failed (None while it runs)."""
    if job.status is None:
        return None
    ended = [
        c.last_transition_time
        for c in job.status.conditions or []
        if c.type in ("Complete", "Failed") and c.status == "True" and c.last_transition_time is not None
    ]
    if job.status.completion_time is not None:
        ended.append(job.status.completion_time)
    return min(ended) if ended else None


def _api_message(e: ApiException) -> str:
    import json

    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)
