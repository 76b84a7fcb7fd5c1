"""The chart's security: the API needs keys, trainer pods run restricted, the reporting channel can run mutual TLS,
secrets stay in Secrets, the scheduler's RBAC is exactly what it uses, and every pod runs without privileges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helm.chart import DEV_SETS, containers, refusal, workloads
from tests.helm_tools import MINIMAL_VALUES, by_kind, install_notes, one, render
from tunery.settings import Settings


def test_the_api_needs_keys_unless_open_on_purpose(bin_dir: Path) -> None:
    """No auth.apiKeys and no auth.existingSecret: no install, unless auth.allowOpen says the API is meant to be
    open, which becomes TUNERY_ALLOW_OPEN (the API role refuses to start without keys otherwise)."""
    err = refusal(bin_dir, values=[])  # the chart's defaults alone
    assert "the API needs API keys" in err and "auth.apiKeys" in err and "auth.existingSecret" in err
    assert "auth.allowOpen=true" in err
    assert "the API needs API keys" in refusal(bin_dir, "auth.allowOpen=false", values=[])

    def api_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
        return {e["name"]: e for e in containers(one(docs, "Deployment", "tun-tunery-api"))[0]["env"]}

    assert "auth.allowOpen is set" in install_notes(bin_dir, sets=["auth.allowOpen=true"])
    assert "auth.allowOpen is set" not in install_notes(bin_dir, values=[MINIMAL_VALUES], sets=["auth.allowOpen=true"])
    open_docs = render(bin_dir, sets=["auth.allowOpen=true"])
    assert one(open_docs, "ConfigMap", "tun-tunery")["data"]["TUNERY_ALLOW_OPEN"] == "true"
    assert "TUNERY_API_KEYS" not in api_env(open_docs)
    keyed = render(bin_dir, values=[MINIMAL_VALUES])
    assert one(keyed, "ConfigMap", "tun-tunery")["data"]["TUNERY_ALLOW_OPEN"] == "false"
    ref = api_env(keyed)["TUNERY_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tunery-api-keys", "key": "api-keys"}
    err = refusal(bin_dir, "config.extra.TUNERY_ALLOW_OPEN=yes")
    assert "config.extra.TUNERY_ALLOW_OPEN: the chart sets this one" in err


def test_trainer_pods_get_the_restricted_security_context(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The scheduler reads the ConfigMap as its environment; the trainer pods it builds from it are restricted."""
    from scheduler.k8s_manifests import job_manifest

    def trainer_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
        for name, value in one(docs, "ConfigMap", "tun-tunery")["data"].items():
            monkeypatch.setenv(name, value)
        pod = job_manifest(Settings(), job_id="ftjob-a", run="r", spec_ref="s3://b#k")["spec"]["template"]["spec"]
        return dict(pod)

    pod = trainer_pod(rendered["production"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    sets = ["training.securityContext.runAsUser=2000", "training.securityContext.readOnlyRootFilesystem=false"]
    pod = trainer_pod(render(bin_dir, values=[MINIMAL_VALUES], sets=sets))
    assert pod["securityContext"]["runAsUser"] == 2000
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert "runAsUser" in refusal(bin_dir, "training.securityContext.runAsUser=0")  # the schema refuses root


def test_reporting_tls_mounts_a_certificate_into_the_scheduler_and_each_trainer(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scheduler.reportingTls: the scheduler serves (mutual) TLS from its Secret; the trainer pods it builds mount
    theirs and dial with it (tunery/grpc_tls.py reads the same variables)."""
    from scheduler.k8s_manifests import job_manifest
    from tunery.grpc_tls import TRAINER_TLS_ENV

    assert "reportingTls.serverSecret" in refusal(bin_dir, "scheduler.reportingTls.enabled=true")
    sets = [
        "scheduler.reportingTls.enabled=true",
        "scheduler.reportingTls.serverSecret=sched-cert",
        "scheduler.reportingTls.trainerSecret=trainer-cert",
    ]
    docs = render(bin_dir, values=[MINIMAL_VALUES], sets=sets)
    data = one(docs, "ConfigMap", "tun-tunery")["data"]
    assert data["TUNERY_GRPC_TLS_CERT"] == "/etc/tunery/reporting-tls/tls.crt"
    assert data["TUNERY_GRPC_TLS_KEY"] == "/etc/tunery/reporting-tls/tls.key"
    assert data["TUNERY_GRPC_TLS_CLIENT_CA"] == "/etc/tunery/reporting-tls/ca.crt"
    scheduler = one(docs, "Deployment", "tun-tunery-scheduler")["spec"]["template"]["spec"]
    [mount] = [m for m in scheduler["containers"][0]["volumeMounts"] if m["name"] == "reporting-tls"]
    assert mount == {"name": "reporting-tls", "mountPath": "/etc/tunery/reporting-tls", "readOnly": True}
    assert {"name": "reporting-tls", "secret": {"secretName": "sched-cert"}} in scheduler["volumes"]
    api = one(docs, "Deployment", "tun-tunery-api")["spec"]["template"]["spec"]
    assert all(v["name"] != "reporting-tls" for v in api.get("volumes", []))

    for name, value in data.items():
        monkeypatch.setenv(name, value)
    pod = job_manifest(Settings(), job_id="ftjob-a", run="r", spec_ref="s3://b#k")["spec"]["template"]["spec"]
    assert {"name": "reporting-tls", "secret": {"secretName": "trainer-cert", "defaultMode": 0o440}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert [env[n] for n in TRAINER_TLS_ENV] == [
        f"/etc/tunery/reporting-tls/{f}" for f in ("ca.crt", "tls.crt", "tls.key")
    ]

    one_way = render(bin_dir, values=[MINIMAL_VALUES], sets=[*sets, "scheduler.reportingTls.mutual=false"])
    assert "TUNERY_GRPC_TLS_CLIENT_CA" not in one(one_way, "ConfigMap", "tun-tunery")["data"]


def test_grpc_tls_mounts_the_api_certificate(bin_dir: Path) -> None:
    """api.grpc.tls: the API container serves its gRPC port with the Secret's certificate (mutual TLS with its CA);
    the probes stay on the plain HTTP probe port."""
    assert "api.grpc.tls.secret" in refusal(bin_dir, "api.grpc.tls.enabled=true")
    sets = ["api.grpc.tls.enabled=true", "api.grpc.tls.secret=api-grpc-cert"]

    def api_of(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        pod = one(docs, "Deployment", "tun-tunery-api")["spec"]["template"]["spec"]
        return pod, pod["containers"][0]

    pod, api = api_of(render(bin_dir, values=[MINIMAL_VALUES], sets=sets))
    env = {e["name"]: e.get("value") for e in api["env"]}
    # The variables tunery/settings.py reads: its field names, upper-cased, with the TUNERY_ prefix.
    fields = {f"TUNERY_{n.upper()}": n for n in Settings.model_fields if n.startswith("api_grpc_tls")}
    assert env["TUNERY_API_GRPC_TLS_CERT"] == "/etc/tunery/grpc-tls/tls.crt"
    assert env["TUNERY_API_GRPC_TLS_KEY"] == "/etc/tunery/grpc-tls/tls.key"
    assert {"TUNERY_API_GRPC_TLS_CERT", "TUNERY_API_GRPC_TLS_KEY"} <= set(fields)
    assert "TUNERY_API_GRPC_TLS_CLIENT_CA" not in env
    [mount] = [m for m in api["volumeMounts"] if m["name"] == "grpc-tls"]
    assert mount == {"name": "grpc-tls", "mountPath": "/etc/tunery/grpc-tls", "readOnly": True}
    assert {"name": "grpc-tls", "secret": {"secretName": "api-grpc-cert"}} in pod["volumes"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/health", "port": "probe"}

    _, mutual = api_of(render(bin_dir, values=[MINIMAL_VALUES], sets=[*sets, "api.grpc.tls.mutual=true"]))
    env = {e["name"]: e.get("value") for e in mutual["env"]}
    assert (
        env["TUNERY_API_GRPC_TLS_CLIENT_CA"] == "/etc/tunery/grpc-tls/ca.crt"
        and "TUNERY_API_GRPC_TLS_CLIENT_CA" in fields
    )
    # Off (the default): plaintext, no mount.
    pod, plain = api_of(render(bin_dir, values=[MINIMAL_VALUES]))
    assert not any(e["name"].startswith("TUNERY_API_GRPC_TLS") for e in plain["env"])
    assert all(v["name"] != "grpc-tls" for v in pod["volumes"])


def test_secrets_stay_in_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import base64

    docs = rendered["dev"]
    for cfg in by_kind(docs, "ConfigMap"):
        assert not {"TUNERY_DATABASE_URL", "TUNERY_API_KEYS", "TUNERY_S3_SECRET_ACCESS_KEY"} & set(cfg["data"])
        assert "s3-secret-value" not in json.dumps(cfg) and "key-one" not in json.dumps(cfg)
    data = {k: base64.b64decode(v).decode() for k, v in one(docs, "Secret", "tun-tunery")["data"].items()}
    # The password is URL-quoted inside the URL.
    assert (
        data["database-url"]
        == "postgresql+psycopg://tunery:p%40ss%2Fword@tun-tunery-postgresql.tunery.svc.cluster.local:5432/tunery"
    )
    assert data["api-keys"] == "key-one,key-two"
    # Trainer pods are brokered by default: no credentials Secret of theirs, none named to the scheduler.
    assert not [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "tun-tunery-trainer"]
    config = one(docs, "ConfigMap", "tun-tunery")["data"]
    assert config["TUNERY_TRAINER_OBJECT_ACCESS"] == "brokered" and "TUNERY_K8S_CREDENTIALS_SECRET" not in config
    # Only the API container gets the API keys.
    api_env = {e["name"] for e in containers(one(docs, "Deployment", "tun-tunery-api"))[0]["env"]}
    sched_env = {e["name"] for e in containers(one(docs, "Deployment", "tun-tunery-scheduler"))[-1]["env"]}
    assert "TUNERY_API_KEYS" in api_env and "TUNERY_API_KEYS" not in sched_env
    assert "TUNERY_DATABASE_URL" in api_env and "TUNERY_DATABASE_URL" in sched_env
    # vLLM reads adapters from the object store: the S3 keys, from the Secret; never the database or the API keys.
    vllm_env = {e["name"]: e for e in containers(one(docs, "Deployment", "tun-tunery-vllm"))[0]["env"]}
    assert vllm_env["TUNERY_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "tun-tunery"
    assert not {"TUNERY_DATABASE_URL", "TUNERY_API_KEYS"} & set(vllm_env)


# -- RBAC, security, probes -----------------------------------------------------------------------------------------


def test_scheduler_rbac_is_one_role_in_the_training_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    docs = rendered["production"]
    (role,) = by_kind(docs, "Role")
    (binding,) = by_kind(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "tunery-training"
    granted = {
        (group, res, verb, tuple(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = (
        {("batch", "jobs", v, ()) for v in ("create", "get", "list", "delete")}
        | {("", "pods", "list", ()), ("", "pods/log", "get", ()), ("", "events", "list", ())}
        | {("coordination.k8s.io", "leases", "create", ())}
        | {("coordination.k8s.io", "leases", v, ("tunery-scheduler",)) for v in ("get", "update")}
        | {("", "services", "create", ())}
        | {("", "secrets", v, ()) for v in ("create", "patch", "delete")}  # each run's token Secret; never get/list
    )
    assert granted == expected
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tun-tunery-scheduler", "namespace": "tunery"}]


@pytest.mark.parametrize("variant", ["minimal", "production", "dev"])
def test_pods_run_as_non_root_without_privileges(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    for doc in workloads(rendered[variant]):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(doc):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"].get("requests"), c["name"]
            if c["name"] != "vllm":  # vLLM's compilers write caches in version-dependent places
                assert sc["readOnlyRootFilesystem"] is True, c["name"]
        for c in pod["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]
        # Only the scheduler talks to the Kubernetes API.
        mounts_token = pod.get("automountServiceAccountToken", True)
        assert mounts_token == (doc["metadata"]["name"].endswith("-scheduler")), doc["metadata"]["name"]


def test_direct_object_access_gives_trainer_pods_the_store_s_keys(bin_dir: Path) -> None:
    docs = render(bin_dir, sets=[*DEV_SETS, "training.objectAccess=direct"])
    trainer = one(docs, "Secret", "tun-tunery-trainer")["stringData"]
    assert trainer["TUNERY_S3_SECRET_ACCESS_KEY"] == "s3-secret-value"
    assert trainer["TUNERY_S3_ENDPOINT_URL"] == "http://seaweedfs.storage:8333"
    config = one(docs, "ConfigMap", "tun-tunery")["data"]
    assert config["TUNERY_TRAINER_OBJECT_ACCESS"] == "direct"
    assert config["TUNERY_K8S_CREDENTIALS_SECRET"] == "tun-tunery-trainer"
