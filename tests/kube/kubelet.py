"""A test kubelet: registers Nodes with GPU capacity and runs the pods bound to them as local processes.

It is what a real kubelet does, minus containers: each pod's (single) container command + args runs as a
process with the pod's env (literal values, secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef, envFrom;
``$(VAR)`` expanded in command/args), in its own process group. The pod goes Running, then Succeeded or Failed with
the real exit code. When a pod is deleted, its process gets SIGTERM, SIGKILL after the pod's grace period, and the
pod is then removed (grace period 0), as a kubelet does. It runs in a thread of the test process.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("tests.kubelet")

BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodProcess:
    uid: str
    namespace: str
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    killed_at: float | None = None
    grace: float = 30.0
    reported: bool = False
    evicted: bool = False


class TestKubelet:
    __test__ = False  # not a pytest class

    def __init__(
        self,
        api: client.ApiClient,
        workdir: Path,
        nodes: dict[str, int],
        gpu_resource: str = "nvidia.com/gpu",
        cpu: str = "16",
        memory: str = "64Gi",
        base_env: dict[str, str] | None = None,
        poll: float = 0.25,
    ):
        self.core = client.CoreV1Api(api)
        self.workdir = workdir
        self.nodes = nodes
        self.gpu_resource = gpu_resource
        self.cpu = cpu
        self.memory = memory
        self.base_env = (
            base_env if base_env is not None else {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        )
        self.poll = poll
        self.running: dict[str, PodProcess] = {}  # pod uid -> process
        self.done: set[str] = set()  # pod uids already run (never started twice)
        self._pulls: dict[str, int] = {}  # pod uid -> failed image pulls
        self.envs: dict[str, dict[str, str]] = {}  # "namespace/pod" -> the env its process got
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Nodes -------------------------------------------------------------------------------------------
    def register_nodes(self) -> None:
        for name, gpus in self.nodes.items():
            capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
            if gpus:
                capacity[self.gpu_resource] = str(gpus)
            body = client.V1Node(
                metadata=client.V1ObjectMeta(
                    name=name, labels={"kubernetes.io/hostname": name, "tunery.dev/test-node": "true"}
                )
            )
            with contextlib.suppress(ApiException):
                self.core.create_node(body)
            status = {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "test kubelet is ready",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                "nodeInfo": {
                    "machineID": name,
                    "systemUUID": name,
                    "bootID": name,
                    "kernelVersion": "test",
                    "osImage": "test",
                    "containerRuntimeVersion": "test://1",
                    "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
            self.core.patch_node_status(name, {"status": status})
            # The admission plugin taints new nodes not-ready; the node lifecycle controller (disabled) would lift it.
            self.core.patch_node(name, {"spec": {"taints": None}})

    # Lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> TestKubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.register_nodes()
        self._thread = threading.Thread(target=self._loop, name="test-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            procs = list(self.running.values())
        for p in procs:
            _signal(p.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("test kubelet sync failed")
            self._stop.wait(self.poll)

    # Test helpers ------------------------------------------------------------------------------------
    def process_of(self, namespace: str, name: str) -> PodProcess | None:
        with self._lock:
            for p in self.running.values():
                if p.namespace == namespace and p.name == name:
                    return p
        return None

    def kill(self, namespace: str, name: str, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Kill a pod's process from outside (a crash): the pod ends Failed with the signal's exit code."""
        p = self.process_of(namespace, name)
        if p is None:
            return False
        _signal(p.proc, sig)
        return True

    def evict(self, namespace: str, name: str) -> bool:
        """Evict a pod as a kubelet under node pressure does: kill it and report Failed, reason Evicted."""
        p = self.process_of(namespace, name)
        if p is None:
            return False
        p.evicted = True
        _signal(p.proc, signal.SIGKILL)
        return True

    # One pass ----------------------------------------------------------------------------------------
    def sync(self) -> None:
        pods = [pod for pod in self.core.list_pod_for_all_namespaces().items if pod.spec.node_name in self.nodes]
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            with self._lock:
                running = self.running.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(pod, running)
                continue
            if running is None:
                if uid not in self.done and pod.status.phase in (None, "Pending"):
                    self._start(pod)
                continue
            code = running.proc.poll()
            if code is not None and not running.reported:
                self._report_exit(pod, running, code)
        # Pods gone from the API (force-deleted): stop their processes.
        with self._lock:
            gone = [p for uid, p in self.running.items() if uid not in seen]
        for p in gone:
            _signal(p.proc, signal.SIGKILL)
            p.proc.wait()
            with self._lock:
                self.running.pop(p.uid, None)

    def _start(self, pod: Any) -> None:
        uid = pod.metadata.uid
        self.done.add(uid)
        container = pod.spec.containers[0]
        if "does-not-exist" in (container.image or ""):
            # An image no registry has: a kubelet reports ErrImagePull, then backs off (ImagePullBackOff).
            self.done.discard(uid)
            tries = self._pulls.get(uid, 0)
            self._pulls[uid] = tries + 1
            reason = "ErrImagePull" if tries % 2 == 0 else "ImagePullBackOff"
            self._set_waiting(pod, container.name, reason, f'rpc error: pull access denied for "{container.image}"')
            return
        try:
            env = self._env(pod, container)
        except ApiException as e:
            self._set_waiting(pod, container.name, "CreateContainerConfigError", f"cannot resolve env: {e.reason}")
            self.done.discard(uid)  # a kubelet retries until the Secret appears
            return
        except KeyError as e:
            self._set_waiting(pod, container.name, "CreateContainerConfigError", f"couldn't find key {e}")
            self.done.discard(uid)
            return
        argv = [_expand(a, env) for a in [*(container.command or []), *(container.args or [])]]
        self.envs[f"{pod.metadata.namespace}/{pod.metadata.name}"] = env
        log_path = self.workdir / f"{pod.metadata.namespace}_{pod.metadata.name}.log"
        cwd = container.working_dir or str(self.workdir)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        grace = pod.spec.termination_grace_period_seconds
        p = PodProcess(
            uid=uid,
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            proc=proc,
            log_path=log_path,
            grace=30.0 if grace is None else float(grace),
        )
        with self._lock:
            self.running[uid] = p
        log.info("started pod %s/%s: pid %d", p.namespace, p.name, proc.pid)
        now = _now()
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            },
        )

    def _report_exit(self, pod: Any, p: PodProcess, code: int) -> None:
        p.reported = True
        exit_code = code if code >= 0 else 128 - code  # killed by signal n: 128 + n, as a container runtime says
        container = pod.spec.containers[0]
        now = _now()
        status: dict[str, Any] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else ("OOMKilled" if False else "Error"),
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        }
        if p.evicted:
            status["reason"] = "Evicted"
            status["message"] = "The node was low on resource: memory."
        self._patch_status(pod, status)
        log.info("pod %s/%s exited %d", p.namespace, p.name, exit_code)
        with self._lock:
            self.running.pop(p.uid, None)

    def _terminate(self, pod: Any, p: PodProcess | None) -> None:
        if p is not None and p.proc.poll() is None:
            if p.killed_at is None:
                p.killed_at = time.monotonic()
                _signal(p.proc, signal.SIGTERM)
                return
            if time.monotonic() - p.killed_at < p.grace:
                return
            _signal(p.proc, signal.SIGKILL)
            p.proc.wait()
        if p is not None:
            with self._lock:
                self.running.pop(p.uid, None)
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                ),
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning(
                    "cannot remove pod %s/%s: %s %s", pod.metadata.namespace, pod.metadata.name, e.status, e.body
                )

    def _set_waiting(self, pod: Any, container: str, reason: str, message: str) -> None:
        self._patch_status(
            pod,
            {
                "containerStatuses": [
                    {
                        "name": container,
                        "image": pod.spec.containers[0].image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    }
                ]
            },
        )

    def _patch_status(self, pod: Any, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
        except ApiException as e:
            if e.status != 404:
                raise

    # Env ---------------------------------------------------------------------------------------------
    def _env(self, pod: Any, container: Any) -> dict[str, str]:
        ns = pod.metadata.namespace
        env = dict(self.base_env)
        for src in container.env_from or []:
            prefix = src.prefix or ""
            if src.secret_ref is not None:
                try:
                    data = self.core.read_namespaced_secret(src.secret_ref.name, ns).data or {}
                except ApiException:
                    if src.secret_ref.optional:
                        continue
                    raise
                env.update({prefix + k: base64.b64decode(v).decode() for k, v in data.items()})
            if src.config_map_ref is not None:
                try:
                    cm = self.core.read_namespaced_config_map(src.config_map_ref.name, ns).data or {}
                except ApiException:
                    if src.config_map_ref.optional:
                        continue
                    raise
                env.update({prefix + k: v for k, v in cm.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = _expand(var.value or "", env)
                continue
            vf = var.value_from
            if vf.secret_key_ref is not None:
                ref = vf.secret_key_ref
                data = self.core.read_namespaced_secret(ref.name, ns).data or {}
                env[var.name] = base64.b64decode(data[ref.key]).decode()
            elif vf.config_map_key_ref is not None:
                ref = vf.config_map_key_ref
                env[var.name] = (self.core.read_namespaced_config_map(ref.name, ns).data or {})[ref.key]
            elif vf.field_ref is not None:
                env[var.name] = _field(pod, vf.field_ref.field_path)
            elif vf.resource_field_ref is not None:
                env[var.name] = _resource(container, vf.resource_field_ref)
        return env


def _resource(container: Any, ref: Any) -> str:
    """A downward-API resource value as a kubelet gives it: the container's request or limit (a limit it lacks: this
    machine's cores or memory), divided by the divisor (1) and rounded up."""
    from kubernetes.utils import parse_quantity

    kind, _, name = ref.resource.partition(".")
    given = ((container.resources.requests if kind == "requests" else container.resources.limits) or {}).get(name)
    if given is None:
        given = (
            str(os.cpu_count() or 1) if name == "cpu" else str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        )
    return str(math.ceil(parse_quantity(given) / parse_quantity(ref.divisor or "1")))


def _field(pod: Any, path: str) -> str:
    m = pod.metadata
    simple = {
        "metadata.name": m.name,
        "metadata.namespace": m.namespace,
        "metadata.uid": m.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path] or ""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if found:
        return ((m.labels if found.group(1) == "labels" else m.annotations) or {}).get(found.group(2), "")
    raise KeyError(path)


def _expand(s: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda mt: env.get(mt.group(1), mt.group(0)), s)


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
