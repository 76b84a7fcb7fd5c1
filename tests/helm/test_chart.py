"""The Helm chart (helm/tunery), offline: lint, schema, validity for current Kubernetes, settings, RBAC, security.

helm and kubectl come from a pinned PyPI wheel (tests/tools/fetch_helm.py); the cluster tests are in
tests/helm/test_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.helm.chart import DEV_SETS, VARIANTS, containers, refusal, workloads
from tests.helm_tools import (
    CHART,
    MINIMAL_VALUES,
    by_kind,
    helm,
    one,
    render,
    template_args,
)
from tunery.settings import Settings

# -- lint and schema ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["minimal", "production", "dev"])
def test_helm_lint_strict_is_clean(bin_dir: Path, variant: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    for v in VARIANTS[variant].get("values", []):
        args += ["-f", str(v)]
    for s in VARIANTS[variant].get("sets", []):
        args += ["--set", s]
    out = helm(bin_dir, *args)
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("api.replicas=3", "additional properties 'replicas' not allowed"),  # replicaCount
        ("vlm.enabled=true", "additional properties 'vlm' not allowed"),
        ("scheduler.leaderElection=yes", "leaderElection"),  # a string, not a boolean
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("vllm.maxLoraRank=12", "maxLoraRank"),  # vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320, 512
        ("objectStore.url=/var/objects", "url"),
        ("config.extra.MAX_FILE_BYTES=1", "MAX_FILE_BYTES"),  # settings are TUNERY_*
        ("config.extra.TUNERY_MAX_LINES=5", "TUNERY_MAX_LINES"),  # numbers: helm would render 5000000 as 5e+06
        ("api.ingress.hosts[0].paths[0].pathType=prefix", "pathType"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(bin_dir: Path, setting: str, complaint: str) -> None:
    out = helm(bin_dir, *template_args(sets=[setting]), check=False)
    assert out.returncode != 0
    assert "schema" in out.stderr and complaint in out.stderr, out.stderr


def values_comments() -> dict[str, list[str]]:
    """Each key path of values.yaml (``api.service.port``) -> the comment lines just above it."""
    import re

    found: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    comments: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        if line.strip().startswith("#"):
            comments.append(line.strip())
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if m:
            indent = len(m.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, m.group(2))]
            found[".".join(k for _, k in stack)] = comments
        comments = []
    return found


def test_every_value_is_in_the_schema_and_documented() -> None:
    """values.yaml validates against values.schema.json, every key is in a closed schema object, and each value
    has a `# --` comment (on itself or on the object holding it)."""
    import jsonschema
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    comments = values_comments()

    def check(node: dict[str, Any], value: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False, f"{path or 'values'}: schema object left open"
        for key, sub in value.items():
            here = f"{path}.{key}".lstrip(".")
            assert key in node["properties"], f"{here} is not in values.schema.json"
            if any(c.startswith("# --") for c in comments[here]):
                continue
            assert isinstance(sub, dict) and node["properties"][key].get("properties"), f"{here}: no '# --' comment"
            check(node["properties"][key], sub, here)

    check(schema, values, "")
    # The schema has nothing values.yaml lacks, at the top level at least.
    assert set(schema["properties"]) == set(values)


def test_helm_readme_lists_every_value() -> None:
    readme = (CHART.parent / "README.md").read_text()
    documented = [path for path, lines in values_comments().items() if any(c.startswith("# --") for c in lines)]
    missing = [path for path in documented if f"| `{path}` |" not in readme]
    assert not missing, f"helm/README.md lacks {missing}"


def test_conflicting_database_settings_fail_with_a_message(bin_dir: Path) -> None:
    err = refusal(bin_dir, "database.url=postgresql+psycopg://u:p@db/t", "postgresql.enabled=true")
    assert "set only one of database.url" in err
    assert "postgresql.auth.password" in refusal(bin_dir, "postgresql.enabled=true")
    direct = "training.objectAccess=direct"
    assert "training.credentials.existingSecret" in refusal(bin_dir, "objectStore.s3.existingSecret=s3", direct)
    err = refusal(bin_dir, "config.extra.TUNERY_OBJECT_STORE=s3://other")
    assert "config.extra.TUNERY_OBJECT_STORE: the chart sets this one" in err
    assert "leaderElection" in refusal(bin_dir, "scheduler.replicaCount=2", "scheduler.leaderElection=false")


# -- valid for current Kubernetes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kube", ["1.25.0", "1.33.0", "1.37.0"])
@pytest.mark.parametrize("variant", ["minimal", "production", "dev"])
def test_manifests_are_valid_for_current_kubernetes(bin_dir: Path, variant: str, kube: str) -> None:
    docs = render(bin_dir, kube_version=kube, **VARIANTS[variant])
    unchecked = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.append(doc["kind"])
    assert set(unchecked) <= {"ServiceMonitor"}  # a CRD of the Prometheus Operator: no schema offline


def test_hpa_api_version_follows_the_server(bin_dir: Path) -> None:
    sets = ["api.autoscaling.enabled=true"]
    (new,) = by_kind(
        render(bin_dir, values=[MINIMAL_VALUES], sets=sets, kube_version="1.33.0"), "HorizontalPodAutoscaler"
    )
    (old,) = by_kind(
        render(bin_dir, values=[MINIMAL_VALUES], sets=sets, kube_version="1.20.2"), "HorizontalPodAutoscaler"
    )
    assert new["apiVersion"] == "autoscaling/v2" and old["apiVersion"] == "autoscaling/v2beta2"


# -- settings -------------------------------------------------------------------------------------------------------


def tunery_env_names(docs: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        if doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
        if doc["kind"] in ("Deployment", "StatefulSet"):
            names |= {e["name"] for c in containers(doc) for e in c.get("env", [])}
    return {n for n in names if n.startswith("TUNERY_")}


def test_every_tunery_variable_the_chart_sets_is_a_setting(rendered: dict[str, list[dict[str, Any]]]) -> None:
    real = {f"TUNERY_{name.upper()}" for name in Settings.model_fields}
    used = set().union(*(tunery_env_names(docs) for docs in rendered.values()))
    unknown = used - real
    assert not unknown, f"the chart sets variables that are no settings: {sorted(unknown)}"
    assert {"TUNERY_DATABASE_URL", "TUNERY_OBJECT_STORE", "TUNERY_API_KEYS", "TUNERY_PORT"} <= used


def test_scheduler_settings_point_at_the_chart_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["production"]
    cfg = one(docs, "ConfigMap", "tun-tunery")["data"]
    assert cfg["TUNERY_SCHEDULER_BACKEND"] == "kubernetes"
    assert cfg["TUNERY_SCHEDULER_LEADER_ELECTION"] == "true"
    assert cfg["TUNERY_K8S_NAMESPACE"] == "tunery-training"
    assert cfg["TUNERY_K8S_TRAINER_IMAGE"] == "ghcr.io/tunery/trainer:0.1.0"
    assert json.loads(cfg["TUNERY_K8S_TOLERATIONS"])[0]["key"] == "nvidia.com/gpu"
    assert json.loads(cfg["TUNERY_K8S_NODE_SELECTOR"]) == {"nvidia.com/gpu.present": "true"}
    assert json.loads(cfg["TUNERY_BASE_MODELS"]) == {"llama-3.1-8b-instruct": "/models/base"}
    assert cfg["TUNERY_MAX_FILE_BYTES"] == "1073741824"
    assert (cfg["TUNERY_PROJECT_MAX_CONCURRENT_JOBS"], cfg["TUNERY_PROJECT_GPU_QUOTA"]) == ("4", "8")
    assert cfg["TUNERY_PROJECT_MAX_STORED_BYTES"] == "107374182400"  # not 1.073741824e+11
    assert (
        Settings(project_requests_per_minute=cfg["TUNERY_PROJECT_REQUESTS_PER_MINUTE"]).project_requests_per_minute
        == 3000
    )
    # The trainer pods' ServiceAccount lives in the training namespace, beside the Role.
    sa = one(docs, "ServiceAccount", cfg["TUNERY_K8S_SERVICE_ACCOUNT"])
    assert sa["metadata"]["namespace"] == "tunery-training" and sa["automountServiceAccountToken"] is False
    # Trainer pods dial the scheduler's gRPC Service.
    grpc = one(docs, "Service", "tun-tunery-scheduler-grpc")
    port = next(p["port"] for p in grpc["spec"]["ports"] if p["name"] == "grpc")
    assert cfg["TUNERY_GRPC_ADVERTISE_ADDRESS"] == f"tun-tunery-scheduler-grpc.tunery.svc.cluster.local:{port}"
    sched = one(docs, "Deployment", "tun-tunery-scheduler")
    assert sched["spec"]["template"]["spec"]["containers"][0]["command"] == ["tunery", "serve", "--role", "scheduler"]
    assert {p["containerPort"] for p in sched["spec"]["template"]["spec"]["containers"][0]["ports"]} == {8000, port}
    # The API proxies chat completions to the vLLM Service.
    vllm = one(docs, "Service", "tun-tunery-vllm")
    assert cfg["TUNERY_SERVING_BACKEND"] == "vllm"
    assert (
        cfg["TUNERY_VLLM_URL"] == f"http://tun-tunery-vllm.tunery.svc.cluster.local:{vllm['spec']['ports'][0]['port']}"
    )


def test_probes_use_the_health_routes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["production"]
    api = one(docs, "Deployment", "tun-tunery-api")["spec"]["template"]["spec"]["containers"][0]
    sched = one(docs, "Deployment", "tun-tunery-scheduler")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in api["env"]}
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    # Both of the API's probes ask its probe port (api/probe.py), which a busy event loop does not delay.
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        assert probe["httpGet"] == {"path": "/health", "port": "probe"}
    assert env["TUNERY_PROBE_PORT"] == str(ports["probe"]) == "8081"
    assert sched["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["command"] == ["tunery", "serve", "--role", "api"]


def test_migrations_run_before_the_scheduler(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sched = one(rendered["production"], "Deployment", "tun-tunery-scheduler")["spec"]["template"]["spec"]
    (init,) = sched["initContainers"]
    assert init["command"] == ["tunery", "db", "upgrade"]
    assert [e["name"] for e in init["env"]] == ["TUNERY_DATABASE_URL"]
    # No database configured: nothing to migrate.
    minimal = one(rendered["minimal"], "Deployment", "tun-tunery-scheduler")["spec"]["template"]["spec"]
    assert "initContainers" not in minimal


def test_vllm_serves_loras_from_the_object_store(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not [d for d in rendered["minimal"] if "vllm" in d["metadata"]["name"]]
    docs = rendered["production"]
    pod = one(docs, "Deployment", "tun-tunery-vllm")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "ghcr.io/tunery/serving:0.1.0"
    assert c["command"] == ["python3", "-m", "serving.vllm_server"]  # vLLM with Tunery's LoRA resolver
    for arg in (
        "--enable-lora",
        "--max-lora-rank=64",
        "--max-loras=8",
        "--model=/models/base",
        "--max-model-len=8192",
        "--served-model-name=llama-3.1-8b-instruct",
        "--tool-call-parser=hermes",
        "--enable-auto-tool-choice",
    ):
        assert arg in c["args"]  # fmt: skip
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    cfg = one(docs, "ConfigMap", "tun-tunery")["data"]
    for name in ("TUNERY_OBJECT_STORE", "TUNERY_S3_REGION"):  # the API's store: the adapters the trainers wrote
        assert env[name] == cfg[name]
    assert env["TUNERY_VLLM_ADAPTER_DIR"].startswith("/tmp/")
    # Adapters come from the object store: the only volume from outside holds the base model; the rest are emptyDirs.
    shared = [v for v in pod["volumes"] if "emptyDir" not in v]
    assert [v["name"] for v in shared] == ["models"]
    assert {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "models"} == {"/models"}
    # The API serves through it, and refuses jobs whose adapters it could not load.
    assert cfg["TUNERY_SERVING_BACKEND"] == "vllm" and cfg["TUNERY_VLLM_MAX_LORA_RANK"] == "64"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["startupProbe"]["httpGet"]["path"] == "/health"


def test_vllm_needs_a_served_model_name_the_api_knows(bin_dir: Path) -> None:
    assert "vllm.servedModelName" in refusal(bin_dir, "vllm.enabled=true")


def test_service_monitor_scrapes_the_metrics_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["production"]
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    components = sm["spec"]["selector"]["matchExpressions"][1]["values"]
    for svc in by_kind(docs, "Service"):
        if svc["metadata"]["labels"]["app.kubernetes.io/component"] in components:
            assert "http" in {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]["name"]


@pytest.mark.parametrize("variant", ["minimal", "production", "dev"])
def test_every_emptydir_has_a_size_limit(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    """Scratch volumes are bounded (uploads spool to the API's /tmp): past the limit the kubelet evicts the pod instead
    of filling the node's disk."""
    found = []
    for doc in workloads(rendered[variant]):
        for v in doc["spec"]["template"]["spec"]["volumes"]:
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), (doc["metadata"]["name"], v["name"])
                found.append(
                    (doc["metadata"]["name"].removeprefix("tun-tunery-"), v["name"], v["emptyDir"]["sizeLimit"])
                )
    expected = {"minimal": {"api", "scheduler"}, "production": {"api", "scheduler", "vllm"}}
    assert {name for name, _, _ in found} == expected.get(variant, {"api", "scheduler", "vllm", "postgresql"})
    limits = {(name, volume): size for name, volume, size in found}
    assert limits[("api", "tmp")] == {"production": "16Gi"}.get(variant, "8Gi")
    assert limits[("scheduler", "tmp")] == "20Gi"


def test_scratch_size_limits_follow_the_values(bin_dir: Path) -> None:
    sets = [
        *DEV_SETS,
        "api.scratch.sizeLimit=2Gi",
        "scheduler.scratch.sizeLimit=3Gi",
        "postgresql.scratch.sizeLimit=100Mi",
        "postgresql.persistence.enabled=false",
        "postgresql.persistence.size=5Gi",
        "vllm.scratch.sizeLimit=50Gi",
    ]
    docs = render(bin_dir, sets=sets)

    def limits(kind: str, name: str) -> dict[str, str]:
        pod = one(docs, kind, f"tun-tunery-{name}")["spec"]["template"]["spec"]
        return {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}

    assert limits("Deployment", "api") == {"tmp": "2Gi", "data": "2Gi"}
    assert limits("Deployment", "scheduler") == {"tmp": "3Gi", "data": "3Gi"}
    assert limits("StatefulSet", "postgresql") == {"run": "100Mi", "tmp": "100Mi", "data": "5Gi"}
    assert limits("Deployment", "vllm") == {"models": "50Gi", "tmp": "50Gi", "shm": "8Gi"}
    out = helm(bin_dir, *template_args(sets=["api.scratch.sizeLimit=lots"]), check=False)
    assert out.returncode != 0 and "sizeLimit" in out.stderr


def test_the_grpc_api_has_a_port_a_service_port_and_a_policy(
    rendered: dict[str, list[dict[str, Any]]], bin_dir: Path
) -> None:
    docs = rendered["dev"]
    api = one(docs, "Deployment", "tun-tunery-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in api["env"]}
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert env["TUNERY_API_GRPC_PORT"] == str(ports["grpc"]) == "50051"  # tunery/settings.py api_grpc_port
    svc = one(docs, "Service", "tun-tunery-api")
    (grpc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["targetPort"] == "grpc" and grpc_port["appProtocol"] == "grpc"
    policy = one(docs, "NetworkPolicy", "tun-tunery-api")
    assert {"port": "grpc", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]
    # With the API off, no port and the server does not serve it.
    off = render(bin_dir, sets=[*DEV_SETS, "api.grpc.enabled=false"])
    off_api = one(off, "Deployment", "tun-tunery-api")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in off_api["env"]}["TUNERY_API_GRPC_PORT"] == "-1"
    assert "grpc" not in {p["name"] for p in off_api["ports"]}
    assert "grpc" not in {p["name"] for p in one(off, "Service", "tun-tunery-api")["spec"]["ports"]}
