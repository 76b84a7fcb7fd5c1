"""The Kubernetes backend's pure parts: the trainer Job manifest (every field), torchrun commands, the headless
Service of multi-node runs, per-project quota decisions, run handles. Manifests are checked offline against
current Kubernetes schemas with kubernetes-validate (the live 1.20 server checks them in test_kubernetes.py)."""

from __future__ import annotations

import pytest

from scheduler.k8s import server_version
from scheduler.k8s_manifests import (
    LABEL_JOB,
    LABEL_RUN,
    TOKEN_KEY,
    TrainerRuntime,
    headless_service_manifest,
    job_manifest,
    job_name,
    make_handle,
    parse_handle,
    run_token_secret_manifest,
    run_token_secret_name,
)
from scheduler.quota import quota_decision
from tunery.jobspec import RUN_TOKEN_ENV
from tunery.quotas import ProjectLimits
from tunery.settings import Settings

SPEC = "s3://tunery/jobs/ftjob-AbC123/spec.json"
REF = "s3://tunery#jobs/ftjob-AbC123/spec.json"


def full_settings(**over) -> Settings:
    opts = dict(
        k8s_namespace="training",
        k8s_trainer_image="registry.example.com/tunery/trainer:1.2.3",
        k8s_image_pull_policy="Always",
        k8s_service_account="tunery-trainer",
        k8s_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        k8s_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        k8s_priority_class="tunery-training",
        k8s_credentials_secret="tunery-s3",
        k8s_gpu_resource="nvidia.com/gpu",
        k8s_gpus_per_job=1,
        k8s_cpu_request="4",
        k8s_memory_request="32Gi",
        k8s_trainer_command=["python", "-m", "trainer"],
        cancel_grace_seconds=20,
    )
    opts.update(over)
    return Settings(**opts)


def test_job_manifest_carries_every_setting():
    m = job_manifest(full_settings(), job_id="ftjob-AbC123", run="x1y2z3", spec_ref=REF)
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    meta = m["metadata"]
    assert meta["name"] == "tunery-ftjob-abc123-x1y2z3" and meta["namespace"] == "training"
    assert meta["labels"][LABEL_JOB] == "ftjob-AbC123" and meta["labels"][LABEL_RUN] == "x1y2z3"
    assert meta["annotations"]["tunery.dev/spec"] == REF
    spec = m["spec"]
    assert spec["backoffLimit"] == 0 and spec["completions"] == 1 and spec["parallelism"] == 1
    assert "completionMode" not in spec
    tmpl = spec["template"]
    assert tmpl["metadata"]["labels"][LABEL_JOB] == "ftjob-AbC123"
    assert tmpl["metadata"]["labels"][LABEL_RUN] == "x1y2z3"
    pod = tmpl["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "tunery-trainer"
    assert pod["automountServiceAccountToken"] is False  # even with a ServiceAccount: no Kubernetes API token
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "tunery-training"
    assert pod["terminationGracePeriodSeconds"] == 20
    [c] = pod["containers"]
    assert c["image"] == "registry.example.com/tunery/trainer:1.2.3" and c["imagePullPolicy"] == "Always"
    # The JobSpec is passed by reference, never inline.
    assert c["command"] == ["python", "-m", "trainer", "--spec", REF]
    assert c["envFrom"] == [{"secretRef": {"name": "tunery-s3"}}]
    env = {e["name"]: e for e in c["env"]}
    assert env["TUNERY_JOB_ID"]["value"] == "ftjob-AbC123"
    # The math libraries' threads: one a requested core, not one for each core of the node.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert env[name]["valueFrom"] == {"resourceFieldRef": {"containerName": "trainer", "resource": "requests.cpu"}}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The run's token comes from the run's own Secret, not from the spec or a literal value in the Job.
    token_ref = env[RUN_TOKEN_ENV]["valueFrom"]["secretKeyRef"]
    assert (
        token_ref == {"name": "tunery-ftjob-abc123-x1y2z3-token", "key": TOKEN_KEY}
        and "value" not in env[RUN_TOKEN_ENV]
    )
    assert c["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]  # the read-only root filesystem's one writable place
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_job_manifest_defaults_are_minimal():
    m = job_manifest(Settings(), job_id="ftjob-q", run="r", spec_ref=REF)
    pod = m["spec"]["template"]["spec"]
    assert m["metadata"]["namespace"] == "tunery-training"
    assert pod["automountServiceAccountToken"] is False  # the trainer never calls the Kubernetes API
    for key in ("serviceAccountName", "nodeSelector", "tolerations", "priorityClassName"):
        assert key not in pod
    [c] = pod["containers"]
    assert "envFrom" not in c
    assert not [e for e in c["env"] if e["name"].endswith("_NUM_THREADS")]  # no CPU request: the image's defaults
    assert c["resources"] == {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    cpu_only = job_manifest(Settings(k8s_gpus_per_job=0), job_id="ftjob-q", run="r", spec_ref=REF)
    assert cpu_only["spec"]["template"]["spec"]["containers"][0]["resources"] == {}


def test_other_gpu_resource_name():
    m = job_manifest(Settings(k8s_gpu_resource="amd.com/gpu", k8s_gpus_per_job=2), job_id="j", run="r", spec_ref=REF)
    res = m["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"amd.com/gpu": "2"}, "limits": {"amd.com/gpu": "2"}}


def test_multi_gpu_runs_torchrun_in_one_pod():
    m = job_manifest(full_settings(k8s_gpus_per_job=4), job_id="ftjob-AbC123", run="r1", spec_ref=REF)
    pod = m["spec"]["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("--no-python") + 1 :] == ["python", "-m", "trainer", "--spec", REF]
    assert m["spec"]["completions"] == 1 and "completionMode" not in m["spec"]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    # A custom entrypoint that is not a Python interpreter runs under the torchrun script.
    custom = job_manifest(
        Settings(k8s_gpus_per_job=2, k8s_trainer_command=["/app/train"]), job_id="j", run="r", spec_ref=REF
    )
    assert custom["spec"]["template"]["spec"]["containers"][0]["command"][0] == "torchrun"


def test_multi_node_runs_an_indexed_job_with_a_headless_service():
    m = job_manifest(
        full_settings(k8s_gpus_per_job=8, k8s_nodes_per_job=3), job_id="ftjob-AbC123", run="r1", spec_ref=REF
    )
    name = m["metadata"]["name"]
    spec = m["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 3 and spec["parallelism"] == 3
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name
    c = pod["containers"][0]
    assert "--nnodes=3" in c["command"] and "--nproc_per_node=8" in c["command"]
    assert "--node_rank=$(TUNERY_NODE_RANK)" in c["command"]
    assert f"--master_addr={name}-0.{name}" in c["command"]
    rank = next(e for e in c["env"] if e["name"] == "TUNERY_NODE_RANK")
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"  # per pod
    svc = headless_service_manifest(m, owner_uid="1234")
    assert svc["metadata"]["name"] == name and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {LABEL_JOB: "ftjob-AbC123", LABEL_RUN: "r1"}
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "1234"  # deleting the Job removes the Service


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 4), (2, 8)])
def test_manifests_are_valid_for_current_kubernetes(nodes, gpus):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    m = job_manifest(
        full_settings(k8s_gpus_per_job=gpus, k8s_nodes_per_job=nodes), job_id="ftjob-Z", run="a", spec_ref=REF
    )
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(m, version, strict=True)
    if nodes > 1:
        kubernetes_validate.validate(headless_service_manifest(m, "uid-1"), version, strict=True)
    secret = run_token_secret_manifest(m, "the-token")
    kubernetes_validate.validate(secret, version, strict=True)
    assert secret["metadata"]["name"] == run_token_secret_name(m["metadata"]["name"])
    assert secret["stringData"] == {TOKEN_KEY: "the-token"} and secret["metadata"]["labels"] == m["metadata"]["labels"]


def test_job_names_are_dns_labels():
    name = job_name("ftjob-" + "A" * 24, "abc123")
    assert name == name.lower() and len(name) <= 63 and not name.endswith("-")
    assert parse_handle(make_handle("ns", name)) == ("ns", name)
    with pytest.raises(ValueError):
        parse_handle("pid:123")


def test_server_version_parsing():
    class V:
        major, minor = "1", "27+"

    assert server_version(V()) == (1, 27)


@pytest.mark.parametrize(
    "limits,running,needed,verdict",
    [
        ({}, 100, 8, "launch"),  # 0 means unlimited
        ({"project_max_concurrent_jobs": 2}, 1, 1, "launch"),
        ({"project_max_concurrent_jobs": 2}, 2, 1, "wait"),
        ({"project_gpu_quota": 4}, 1, 2, "launch"),  # 2 in use + 2 = 4
        ({"project_gpu_quota": 4}, 2, 2, "wait"),  # 4 in use
        ({"project_gpu_quota": 4}, 0, 8, "refuse"),  # never fits
    ],
)
def test_quota_decisions(limits, running, needed, verdict):
    d = quota_decision(
        ProjectLimits.defaults(Settings(**limits)),
        running_jobs=running,
        gpus_in_use=running * needed,
        gpus_needed=needed,
    )
    assert d.verdict == verdict
    if verdict != "launch":
        assert d.message


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUNERY_SCHEDULER_BACKEND", "kubernetes")
    monkeypatch.setenv("TUNERY_K8S_NODE_SELECTOR", '{"pool": "gpu"}')
    monkeypatch.setenv("TUNERY_K8S_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    monkeypatch.setenv("TUNERY_K8S_TRAINER_COMMAND", '["/venv/bin/python", "-m", "trainer"]')
    monkeypatch.setenv("TUNERY_PROJECT_GPU_QUOTA", "16")
    s = Settings()
    assert s.scheduler_backend == "kubernetes" and s.k8s_node_selector == {"pool": "gpu"}
    assert s.k8s_tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert s.k8s_trainer_command[0] == "/venv/bin/python" and s.project_gpu_quota == 16
    monkeypatch.setenv("TUNERY_SCHEDULER_BACKEND", "slurm")
    with pytest.raises(ValueError):
        Settings()


def test_a_foreign_run_handle_is_not_a_running_kubernetes_job():
    from scheduler.k8s import KubernetesBackend

    backend = KubernetesBackend(Settings(), api=object())  # type: ignore[arg-type]  # no call reaches the API
    st = backend.status("pid:1234")
    assert not st.running and st.crashed and "another scheduler backend" in (st.error or "")
    backend.cancel("pid:1234")  # a no-op, not an error


def test_a_jobs_runtime_snapshot_outlives_a_change_of_settings() -> None:
    """The runtime is taken from the settings when a job is queued and stored with it (JSON): a job launched (or
    resumed) after the settings changed gets the manifest it was queued with."""
    queued_with = full_settings(k8s_gpus_per_job=2)
    stored = TrainerRuntime.from_settings(queued_with).model_dump()
    changed = full_settings(
        k8s_trainer_image="registry.example.com/tunery/trainer:2.0.0",
        k8s_tolerations=[],
        k8s_gpus_per_job=1,
        k8s_priority_class="",
    )
    runtime = TrainerRuntime.model_validate(stored)
    later = job_manifest(changed, job_id="ftjob-AbC123", run="r1", spec_ref=REF, runtime=runtime)
    assert later == job_manifest(queued_with, job_id="ftjob-AbC123", run="r1", spec_ref=REF)
    now = job_manifest(changed, job_id="ftjob-AbC123", run="r1", spec_ref=REF)
    assert now["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":2.0.0")
    assert later["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.2.3")
    assert runtime.gpus_per_run == 2 and TrainerRuntime.from_settings(changed).gpus_per_run == 1
    # The security context is part of the snapshot too.
    other_user = job_manifest(full_settings(k8s_run_as_user=4242), job_id="j", run="r", spec_ref=REF, runtime=runtime)
    assert other_user["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


# Pod Security Standards, "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# the controls that apply to a pod like the trainer's, checked on the manifest as the admission plugin checks them.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected"}
RESTRICTED_VOLUMES |= {"secret"}


def restricted_violations(pod: dict) -> list[str]:
    found = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(key)
    for v in pod.get("volumes", []):
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES:
            found.append(f"volume {v['name']}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


@pytest.mark.parametrize("nodes,gpus", [(1, 0), (1, 1), (1, 4), (2, 8)])
def test_trainer_pods_meet_the_restricted_pod_security_standard(nodes, gpus):
    m = job_manifest(
        full_settings(k8s_gpus_per_job=gpus, k8s_nodes_per_job=nodes), job_id="ftjob-Z", run="a", spec_ref=REF
    )
    pod = m["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,  # the trainer image's user
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    [c] = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert next(v for v in pod["volumes"] if v["name"] == tmp) == {"name": tmp, "emptyDir": {}}
    # The checker sees what it checks: a pod without securityContexts and with a hostPath volume breaks five rules.
    bare = {"containers": [{"name": "trainer"}], "volumes": [{"name": "models", "hostPath": {"path": "/models"}}]}
    assert len(restricted_violations(bare)) == 5


def test_the_trainer_user_and_root_filesystem_are_settings(monkeypatch):
    monkeypatch.setenv("TUNERY_K8S_RUN_AS_USER", "2000")
    monkeypatch.setenv("TUNERY_K8S_RUN_AS_GROUP", "0")
    monkeypatch.setenv("TUNERY_K8S_READ_ONLY_ROOT_FILESYSTEM", "false")
    m = job_manifest(Settings(), job_id="ftjob-q", run="r", spec_ref=REF)
    pod = m["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (2000, 0)
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]  # no /tmp needed
    assert restricted_violations(pod) == []  # the rest of the profile is not a setting
    monkeypatch.setenv("TUNERY_K8S_RUN_AS_USER", "0")
    with pytest.raises(ValueError, match="k8s_run_as_user"):
        Settings()  # root is refused, as runAsNonRoot would refuse the pod


def test_a_runtime_stored_before_security_contexts_gets_the_restricted_one():
    stored = TrainerRuntime.from_settings(full_settings()).model_dump()
    for key in ("run_as_user", "run_as_group", "read_only_root_filesystem"):
        del stored[key]
    m = job_manifest(Settings(), job_id="j", run="r", spec_ref=REF, runtime=TrainerRuntime.model_validate(stored))
    pod = m["spec"]["template"]["spec"]
    assert restricted_violations(pod) == [] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_trainer_tls_secret_is_mounted_and_named_in_the_trainer_s_environment():
    from tunery.grpc_tls import TRAINER_TLS_ENV

    pod = job_manifest(Settings(k8s_trainer_tls_secret="trainer-cert"), job_id="ftjob-q", run="r", spec_ref=REF)
    spec = pod["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert {"name": "reporting-tls", "secret": {"secretName": "trainer-cert", "defaultMode": 0o440}} in spec["volumes"]
    assert {"name": "reporting-tls", "mountPath": "/etc/tunery/reporting-tls", "readOnly": True} in c["volumeMounts"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env[TRAINER_TLS_ENV[0]] == "/etc/tunery/reporting-tls/ca.crt"
    plain = job_manifest(Settings(), job_id="ftjob-q", run="r", spec_ref=REF)["spec"]["template"]["spec"]
    assert all(v["name"] != "reporting-tls" for v in plain.get("volumes", []))
    assert not {e["name"] for e in plain["containers"][0]["env"]} & set(TRAINER_TLS_ENV)


BROKER_REF = "tunery-broker://tunery-scheduler.tunery.svc:50051/ftjob-AbC123#jobs/ftjob-AbC123/spec.json"


def test_brokered_trainer_pods_carry_no_object_store_credentials():
    """S3 with the Kubernetes backend brokers trainers' object access by default: their pods get no credentials
    Secret (even one named in the job's runtime snapshot) and no store variable; their only credential is the run
    token, from the run's own Secret."""
    s3 = {"object_store": "s3://tunery/prefix", "scheduler_backend": "kubernetes"}
    settings = full_settings(**s3)
    assert settings.trainers_brokered and settings.object_access_refusal() is None
    runtime = TrainerRuntime.from_settings(settings)
    assert runtime.credentials_secret == "tunery-s3"  # what a job queued in direct mode stored
    for m in (
        job_manifest(settings, job_id="ftjob-AbC123", run="r", spec_ref=BROKER_REF),
        job_manifest(settings, job_id="ftjob-AbC123", run="r", spec_ref=BROKER_REF, runtime=runtime),
    ):
        [c] = m["spec"]["template"]["spec"]["containers"]
        assert "envFrom" not in c and c["command"][-2:] == ["--spec", BROKER_REF]
        names = {e["name"] for e in c["env"]}
        assert not {n for n in names if n.startswith(("TUNERY_S3_", "AWS_"))}
        secrets = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert secrets == [{"name": "tunery-ftjob-abc123-r-token", "key": TOKEN_KEY}]
    # Direct access, asked for: the credentials Secret, as before.
    direct = full_settings(**s3, trainer_object_access="direct")
    [c] = job_manifest(direct, job_id="j", run="r", spec_ref=REF)["spec"]["template"]["spec"]["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "tunery-s3"}}]


@pytest.mark.parametrize(
    ("over", "brokered"),
    [
        ({}, False),  # the local folder and local processes: one machine, one trust domain
        ({"object_store": "s3://b"}, False),  # S3 with local trainers: direct unless asked
        ({"object_store": "s3://b", "trainer_object_access": "brokered"}, True),
        ({"scheduler_backend": "kubernetes"}, False),  # a local folder has no presigned URLs
        ({"object_store": "s3://b", "scheduler_backend": "kubernetes"}, True),
    ],
)
def test_which_trainers_are_brokered(over, brokered):
    assert Settings(**over).trainers_brokered is brokered


def test_brokered_access_needs_an_s3_store():
    refusal = Settings(trainer_object_access="brokered").object_access_refusal()
    assert refusal and "TUNERY_TRAINER_OBJECT_ACCESS" in refusal and "s3://" in refusal
