"""The Kubernetes backend's manifests and run handles: pure functions of the settings, no API client.

The batch/v1 Job of one trainer run (:func:`job_manifest`), its pod's command (the trainer, under torchrun for
several GPUs or nodes), the headless Service of a multi-node run, the run's DNS-1123 name and labels, and the
``k8s:<namespace>/<name>`` handle the scheduler records. :mod:`scheduler.k8s` sends them to the API server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from scheduler.cores import THREAD_ENV
from tunery.grpc_tls import TRAINER_TLS_ENV
from tunery.jobspec import RUN_TOKEN_ENV
from tunery.settings import TRAINER_UID, Settings

# Every trainer pod carries these; the chart's NetworkPolicies select trainer pods by them (helm/tunery).
TRAINER_LABELS = {"app.kubernetes.io/name": "tunery-trainer", "app.kubernetes.io/managed-by": "tunery"}
LABEL_JOB = "tunery.dev/job-id"
LABEL_RUN = "tunery.dev/run"
ANNOTATION_SPEC = "tunery.dev/spec"
TOKEN_KEY = "run-token"  # the key of a run's token Secret
TLS_MOUNT = "/etc/tunery/reporting-tls"  # where a trainer's reporting-channel certificate is mounted
HANDLE_PREFIX = "k8s:"
MASTER_PORT = 29500


def job_name(job_id: str, run: str) -> str:
    """A DNS-1123 name for one run of a job (job ids are mixed case; the label keeps the exact id)."""
    return f"tunery-{job_id.lower().replace('_', '-')}-{run}"[:63].rstrip("-")


def make_handle(namespace: str, name: str) -> str:
    return f"{HANDLE_PREFIX}{namespace}/{name}"


def parse_handle(handle: str) -> tuple[str, str]:
    if not handle.startswith(HANDLE_PREFIX) or "/" not in handle:
        raise ValueError(f"not a Kubernetes run handle: {handle!r}")
    ns, name = handle[len(HANDLE_PREFIX) :].split("/", 1)
    return ns, name


class TrainerRuntime(BaseModel):
    """What a job's trainer pods run with: the image, the command, the resources and where they may run. Taken from
    the settings when the job is queued and stored with it (``jobs.runtime``), so a change of settings (a new image,
    other tolerations) applies to jobs queued afterwards, never to a queued, paused or resumed one."""

    image: str = ""
    image_pull_policy: str = "IfNotPresent"
    command: list[str] = Field(default_factory=lambda: ["python", "-m", "trainer"])
    gpus_per_job: int = 1  # per pod
    nodes_per_job: int = 1  # > 1: an Indexed Job + headless Service, torchrun across pods
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = ""
    memory_request: str = ""
    service_account: str = ""
    credentials_secret: str = ""
    tls_secret: str = ""  # the trainer's certificate for the reporting channel (tls.crt, tls.key, ca.crt)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class: str = ""
    # Restricted Pod Security Standard; a runtime stored before these fields existed gets these defaults.
    run_as_user: int = Field(default=TRAINER_UID, ge=1)
    run_as_group: int = Field(default=TRAINER_UID, ge=0)
    read_only_root_filesystem: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainerRuntime:
        return cls(
            image=settings.k8s_trainer_image,
            image_pull_policy=settings.k8s_image_pull_policy,
            command=list(settings.k8s_trainer_command),
            gpus_per_job=settings.k8s_gpus_per_job,
            nodes_per_job=settings.k8s_nodes_per_job,
            gpu_resource=settings.k8s_gpu_resource,
            cpu_request=settings.k8s_cpu_request,
            memory_request=settings.k8s_memory_request,
            service_account=settings.k8s_service_account,
            credentials_secret=settings.k8s_credentials_secret,
            tls_secret=settings.k8s_trainer_tls_secret,
            node_selector=dict(settings.k8s_node_selector),
            tolerations=[dict(t) for t in settings.k8s_tolerations],
            priority_class=settings.k8s_priority_class,
            run_as_user=settings.k8s_run_as_user,
            run_as_group=settings.k8s_run_as_group,
            read_only_root_filesystem=settings.k8s_read_only_root_filesystem,
        )

    @property
    def nodes(self) -> int:
        return max(1, self.nodes_per_job)

    @property
    def gpus(self) -> int:
        """GPUs of one pod."""
        return max(0, self.gpus_per_job)

    @property
    def gpus_per_run(self) -> int:
        return self.gpus * self.nodes


def gpus_per_run(settings: Settings) -> int:
    return TrainerRuntime.from_settings(settings).gpus_per_run


# Manifests -------------------------------------------------------------------------------------------------
def security_contexts(runtime: TrainerRuntime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's securityContext: the "restricted" Pod Security Standard (a non-root user, no
    privilege escalation, every capability dropped, the runtime's default seccomp profile) and, unless the runtime
    says otherwise, a read-only root filesystem (the pod then has an emptyDir on /tmp)."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": runtime.run_as_user,
        "runAsGroup": runtime.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": runtime.read_only_root_filesystem,
    }
    return pod, container


def trainer_command(runtime: TrainerRuntime, spec_ref: str, name: str) -> list[str]:
    """The pod's command: the trainer, under torchrun when the run has several GPUs or nodes."""
    base = list(runtime.command)
    gpus, nodes = runtime.gpus_per_job, runtime.nodes
    if gpus <= 1 and nodes == 1:
        return [*base, "--spec", spec_ref]
    exe = os.path.basename(base[0])
    launcher = [base[0], "-m", "torch.distributed.run"] if exe.startswith("python") else ["torchrun"]
    dist = [f"--nproc_per_node={max(1, gpus)}"]
    if nodes > 1:
        dist += [
            f"--nnodes={nodes}",
            "--node_rank=$(TUNERY_NODE_RANK)",
            f"--master_addr={name}-0.{name}",
            f"--master_port={MASTER_PORT}",
        ]
    else:
        dist += ["--standalone"]
    return [*launcher, *dist, "--no-python", *base, "--spec", spec_ref]


def job_manifest(
    settings: Settings,
    *,
    job_id: str,
    run: str,
    spec_ref: str,
    namespace: str | None = None,
    runtime: TrainerRuntime | None = None,
    secret_env: Sequence[str] = (),
) -> dict[str, Any]:
    """The batch/v1 Job of one run (a plain dict, as sent to the API server), with the job's ``runtime`` (the
    settings' when None). ``secret_env``: the environment variables the run's Secret also holds (the project's
    integration secrets: :func:`run_token_secret_manifest`)."""
    rt = runtime or TrainerRuntime.from_settings(settings)
    ns = namespace or settings.k8s_namespace
    name = job_name(job_id, run)
    nodes, gpus = rt.nodes, rt.gpus
    labels = {
        **TRAINER_LABELS,
        LABEL_JOB: job_id,
        LABEL_RUN: run,
    }
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if rt.cpu_request:
        requests["cpu"] = rt.cpu_request
    if rt.memory_request:
        requests["memory"] = rt.memory_request
    if gpus:
        requests[rt.gpu_resource] = limits[rt.gpu_resource] = str(gpus)
    env: list[dict[str, Any]] = [
        {"name": "TUNERY_JOB_ID", "value": job_id},
        {"name": "TUNERY_RUN", "value": run},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # The run's token, from its own Secret (run_token_secret_manifest): never in the spec every trainer can read.
        {"name": RUN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": run_token_secret_name(name), "key": TOKEN_KEY}}},
        # The project's integration secrets (a W&B API key), from the same Secret: never in the spec either.
        *(
            {"name": env_name, "valueFrom": {"secretKeyRef": {"name": run_token_secret_name(name), "key": env_name}}}
            for env_name in secret_env
        ),
    ]
    if rt.cpu_request:
        # The math libraries' threads, one a requested core (rounded up): a container sees every core of its node,
        # and torch would start a thread for each (scheduler.cores says what oversubscribing costs).
        env += [
            {"name": name, "valueFrom": {"resourceFieldRef": {"containerName": "trainer", "resource": "requests.cpu"}}}
            for name in THREAD_ENV
        ]
    if nodes > 1:
        env.append(
            {
                "name": "TUNERY_NODE_RANK",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        )
    pod_security, container_security = security_contexts(rt)
    container: dict[str, Any] = {
        "name": "trainer",
        "image": rt.image,
        "imagePullPolicy": rt.image_pull_policy,
        "command": trainer_command(rt, spec_ref, name),
        "env": env,
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "securityContext": container_security,
    }
    if rt.credentials_secret and not settings.trainers_brokered:
        # Direct object access: the store's credentials. A brokered trainer has none (scheduler/object_access.py),
        # whatever the job's runtime snapshot names.
        container["envFrom"] = [{"secretRef": {"name": rt.credentials_secret}}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(1, round(settings.cancel_grace_seconds)),
        "securityContext": pod_security,
        "automountServiceAccountToken": False,  # the trainer never talks to the Kubernetes API
        "containers": [container],
    }
    if rt.service_account:
        pod["serviceAccountName"] = rt.service_account
    if rt.node_selector:
        pod["nodeSelector"] = dict(rt.node_selector)
    if rt.tolerations:
        pod["tolerations"] = [dict(t) for t in rt.tolerations]
    if rt.priority_class:
        pod["priorityClassName"] = rt.priority_class
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if rt.read_only_root_filesystem:
        # The trainer's only writable place: its work folders (tempfile), HOME, the Hugging Face, Triton and torch
        # caches (the image points them all at /tmp); on the node's disk, as the container layer would be.
        volumes.append({"name": "tmp", "emptyDir": {}})
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
    if rt.tls_secret:
        # TLS, or mutual TLS, on the reporting channel (tunery/grpc_tls.py): cert-manager's file names.
        volumes.append({"name": "reporting-tls", "secret": {"secretName": rt.tls_secret, "defaultMode": 0o440}})
        mounts.append({"name": "reporting-tls", "mountPath": TLS_MOUNT, "readOnly": True})
        files = ("ca.crt", "tls.crt", "tls.key")
        container["env"] += [
            {"name": n, "value": f"{TLS_MOUNT}/{f}"} for n, f in zip(TRAINER_TLS_ENV, files, strict=True)
        ]
    if gpus > 1 or nodes > 1:
        # NCCL and the DataLoader workers share memory through /dev/shm, which a container keeps at 64 MB.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if volumes:
        pod["volumes"] = volumes
        container["volumeMounts"] = mounts
    spec: dict[str, Any] = {
        "backoffLimit": 0,  # the scheduler owns retries
        "completions": nodes,
        "parallelism": nodes,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if nodes > 1:
        spec["completionMode"] = "Indexed"
        pod["subdomain"] = name  # <name>-<index>.<name> resolves through the headless Service
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": {ANNOTATION_SPEC: spec_ref}},
        "spec": spec,
    }


def run_token_secret_name(job_name: str) -> str:
    return f"{job_name}-token"


def run_token_secret_manifest(
    job: dict[str, Any], run_token: str, secrets: dict[str, str] | None = None
) -> dict[str, Any]:
    """The Secret that holds one run's token, and the project's integration secrets its job reads (by environment
    variable), read by that run's pods alone (through their env): created before its Job, then owned by it
    (:func:`owner_references`), so it goes when the Job goes."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": run_token_secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": dict(meta["labels"]),
        },
        "stringData": {**(secrets or {}), TOKEN_KEY: run_token},
    }


def owner_references(job_name: str, job_uid: str) -> list[dict[str, Any]]:
    """What makes an object part of a trainer Job: Kubernetes' garbage collector deletes it with the Job."""
    return [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid, "blockOwnerDeletion": True}]


def headless_service_manifest(job: dict[str, Any], owner_uid: str | None = None) -> dict[str, Any]:
    """The headless Service that gives the pods of a multi-node run stable DNS names (torchrun's master)."""
    meta = job["metadata"]
    labels = meta["labels"]
    svc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(labels)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: labels[LABEL_JOB], LABEL_RUN: labels[LABEL_RUN]},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }
    if owner_uid:
        svc["metadata"]["ownerReferences"] = owner_references(meta["name"], owner_uid)
    return svc
