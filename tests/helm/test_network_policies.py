"""The chart's NetworkPolicies, on by default: who may connect to whom, checked on the rendered policies with the
rules of NetworkPolicy (a connection needs the source's egress and the destination's ingress to admit it; a pod no
policy selects for a direction is open in it). Trainer pods are the ones scheduler/k8s_manifests.py builds from the
chart's ConfigMap."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helm_tools import MINIMAL_VALUES, PRODUCTION_VALUES, by_kind, install_notes, one, render, tools_dir
from tunery.settings import Settings

TRAINING = "tunery-training"
# Every part on: the chart's PostgreSQL, vLLM, an S3-compatible store in the cluster, a training namespace of its own.
DEV_SETS = [
    "postgresql.enabled=true",
    "postgresql.auth.password=pw",
    "auth.apiKeys={k1}",
    "objectStore.s3.endpointUrl=http://seaweedfs.storage:8333",
    "vllm.enabled=true",
    "vllm.servedModelName=m",
    "config.baseModels.m=/models/base",
    f"training.namespace={TRAINING}",
]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # named container ports
    name: str = ""


@dataclass(frozen=True)
class Address:
    """Something that is not a pod: an address outside the cluster, or the Kubernetes API server."""

    ip: str


KUBE_API = Address("10.96.0.1")  # the `kubernetes` Service, answered by the API server (no pod)
INTERNET = Address("203.0.113.7")
S3_IN_VPC = Address("10.20.4.5")  # inside production-values' 10.20.0.0/16
STORE = Pod("storage", {"app": "seaweedfs"}, name="object store")
DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, name="DNS")
PROMETHEUS = Pod("monitoring", {"app": "prometheus"}, name="prometheus")


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the chart uses matchLabels only
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict[str, Any], policy_ns: str, other: Pod | Address) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if not isinstance(other, Address):
            return False
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if isinstance(other, Address):
        return False  # pod and namespace selectors name pods only
    ns_ok = (
        _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
        if "namespaceSelector" in peer
        else other.namespace == policy_ns
    )
    return ns_ok and _matches(peer.get("podSelector", {}), other.labels)


def _port_admits(rule: dict[str, Any], port: int, protocol: str, target: Pod | Address) -> bool:
    if "ports" not in rule:
        return True
    for p in rule["ports"]:
        number = target.ports.get(p["port"]) if isinstance(p["port"], str) and isinstance(target, Pod) else p["port"]
        if number == port and p.get("protocol", "TCP") == protocol:
            return True
    return False


def _admitted(
    docs: list[dict[str, Any]], pod: Pod, direction: str, other: Pod | Address, port: int, proto: str
) -> bool:
    """Whether the policies selecting ``pod`` admit ``other`` in ``direction`` (Ingress or Egress) on ``port`` (of the
    destination, which names the named ports): any rule of any of them, or no policy at all for that direction."""
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    target = pod if direction == "Ingress" else other
    policies = [
        p["spec"]
        for p in by_kind(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == pod.namespace
        and _matches(p["spec"]["podSelector"], pod.labels)
        and direction in p["spec"]["policyTypes"]
    ]
    if not policies:
        return True
    for spec in policies:
        for rule in spec.get(key) or []:
            if not _port_admits(rule, port, proto, target):
                continue
            if peers not in rule or any(_peer_admits(peer, pod.namespace, other) for peer in rule[peers]):
                return True
    return False


def can_connect(docs: list[dict[str, Any]], src: Pod, dst: Pod | Address, port: int, proto: str = "TCP") -> bool:
    """The source's egress and the destination's ingress both admit the connection (named ports are the
    destination's)."""
    if not _admitted(docs, src, "Egress", dst, port, proto):
        return False
    return isinstance(dst, Address) or _admitted(docs, dst, "Ingress", src, port, proto)


def parts(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, Pod]:
    """The release's pods (from its workloads) and a trainer pod, as the scheduler builds it from the ConfigMap."""
    from scheduler.k8s_manifests import job_manifest

    found = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            tmpl = doc["spec"]["template"]
            ports = {p["name"]: p["containerPort"] for c in tmpl["spec"]["containers"] for p in c.get("ports", [])}
            component = tmpl["metadata"]["labels"]["app.kubernetes.io/component"]
            found[component] = Pod(doc["metadata"]["namespace"], tmpl["metadata"]["labels"], ports, component)
    for name, value in one(docs, "ConfigMap", "tun-tunery")["data"].items():
        monkeypatch.setenv(name, value)
    job = job_manifest(Settings(), job_id="ftjob-a", run="r1", spec_ref="s3://b#k")
    found["trainer"] = Pod(job["metadata"]["namespace"], job["spec"]["template"]["metadata"]["labels"], name="trainer")
    return found


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return tools_dir()


def test_policies_are_on_by_default_and_select_every_pod(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minimal = render(bin_dir, values=[MINIMAL_VALUES])
    names = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in by_kind(minimal, "NetworkPolicy")}
    assert names == {("tunery", "tun-tunery-api"), ("tunery", "tun-tunery-scheduler"), ("tunery", "tun-tunery-trainer")}
    dev = render(bin_dir, sets=DEV_SETS)
    for pod in parts(dev, monkeypatch).values():
        selecting = [
            p
            for p in by_kind(dev, "NetworkPolicy")
            if p["metadata"]["namespace"] == pod.namespace and _matches(p["spec"]["podSelector"], pod.labels)
        ]
        assert len(selecting) == 1, pod.name
        assert selecting[0]["spec"]["policyTypes"] == ["Ingress", "Egress"], pod.name
    off = render(bin_dir, values=[MINIMAL_VALUES], sets=["networkPolicy.enabled=false"])
    assert not by_kind(off, "NetworkPolicy")


def test_each_part_reaches_only_what_it_talks_to(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(bin_dir, sets=DEV_SETS)
    p = parts(docs, monkeypatch)
    api, sched, trainer, vllm, pg = p["api"], p["scheduler"], p["trainer"], p["vllm"], p["postgresql"]
    other_trainer = Pod(trainer.namespace, {**trainer.labels, "tunery.dev/run": "r2"}, name="another trainer pod")
    assert trainer.namespace == TRAINING
    expected = [
        # The API: PostgreSQL, the object store, vLLM; never the scheduler or the Kubernetes API.
        (api, pg, 5432, True),
        (api, STORE, 8333, True),
        (api, vllm, 8000, True),
        (api, sched, 50051, False),
        (api, KUBE_API, 443, False),
        (api, INTERNET, 443, False),
        # The scheduler: the Kubernetes API, PostgreSQL, the object store; not vLLM.
        (sched, KUBE_API, 443, True),
        (sched, KUBE_API, 6443, True),
        (sched, pg, 5432, True),
        (sched, STORE, 8333, True),
        (sched, vllm, 8000, False),
        (sched, STORE, 22, False),
        # Trainer pods: the scheduler's gRPC port, the object store, each other (torchrun, NCCL); nothing else.
        (trainer, sched, 50051, True),
        (trainer, sched, 8000, False),
        (trainer, STORE, 8333, True),
        (trainer, other_trainer, 29500, True),
        (trainer, other_trainer, 41234, True),
        (trainer, KUBE_API, 443, False),
        (trainer, KUBE_API, 6443, False),
        (trainer, api, 8000, False),
        (trainer, pg, 5432, False),
        (trainer, vllm, 8000, False),
        (trainer, INTERNET, 443, False),
        # vLLM: reached from the API only, reaches the object store only.
        (vllm, STORE, 8333, True),
        (vllm, api, 8000, False),
        (vllm, pg, 5432, False),
        (vllm, INTERNET, 443, False),
        # PostgreSQL connects nowhere; others do not reach in.
        (pg, STORE, 8333, False),
        (STORE, pg, 5432, False),
        (STORE, api, 8000, True),  # apiFrom empty: everyone reaches the API
    ]
    wrong = [
        (s.name, getattr(d, "name", d), port) for s, d, port, ok in expected if can_connect(docs, s, d, port) != ok
    ]
    assert not wrong, wrong
    for src in (api, sched, trainer, vllm):
        assert can_connect(docs, src, DNS, 53, "UDP") and can_connect(docs, src, DNS, 53, "TCP"), src.name
    assert not can_connect(docs, pg, DNS, 53, "UDP")
    for outsider in (sched, trainer, STORE, PROMETHEUS):
        assert not can_connect(docs, outsider, vllm, 8000), outsider.name


def test_outside_addresses_and_ports_come_from_the_values(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(bin_dir, values=[PRODUCTION_VALUES])
    p = parts(docs, monkeypatch)
    # production-values: PostgreSQL, S3 and the API server in the VPC (10.20.0.0/16); S3 at https, port 443.
    for src in (p["api"], p["scheduler"], p["trainer"], p["vllm"]):
        assert can_connect(docs, src, S3_IN_VPC, 443), src.name
        # only the scheduler reaches the internet: the webhook endpoints (egress.webhooks, on by default)
        assert can_connect(docs, src, INTERNET, 443) == (src is p["scheduler"]), src.name
        assert not can_connect(docs, src, S3_IN_VPC, 80), src.name
    assert can_connect(docs, p["api"], S3_IN_VPC, 5432) and can_connect(docs, p["scheduler"], S3_IN_VPC, 5432)
    assert not can_connect(docs, p["trainer"], S3_IN_VPC, 5432) and not can_connect(docs, p["vllm"], S3_IN_VPC, 5432)
    assert can_connect(docs, p["scheduler"], S3_IN_VPC, 6443) and not can_connect(docs, p["api"], S3_IN_VPC, 6443)
    # metricsFrom (the monitoring namespace) scrapes vLLM, the scheduler and, with apiFrom set, the API.
    for target, port in ((p["vllm"], 8000), (p["scheduler"], 8000), (p["api"], 8000)):
        assert can_connect(docs, PROMETHEUS, target, port), target.name
    assert not can_connect(docs, STORE, p["api"], 8000)  # apiFrom: the ingress controller's namespace only
    assert can_connect(docs, Pod("ingress-nginx", {"app": "nginx"}), p["api"], 8000)

    # The object store's port: the endpoint's, unless set.
    def store_ports(*sets: str) -> list[Any]:
        d = render(bin_dir, values=[MINIMAL_VALUES], sets=list(sets))
        rules = one(d, "NetworkPolicy", "tun-tunery-trainer")["spec"]["egress"]
        return [r["ports"] for r in rules if r.get("to") == [{"namespaceSelector": {}}]]

    assert store_ports() == [[{"port": 443, "protocol": "TCP"}]]  # AWS S3
    assert store_ports("objectStore.s3.endpointUrl=http://minio.storage") == [[{"port": 80, "protocol": "TCP"}]]
    assert store_ports("objectStore.s3.endpointUrl=http://[fd00::5]:9000") == [[{"port": 9000, "protocol": "TCP"}]]
    sets = ["objectStore.s3.endpointUrl=http://rgw.rook:80", "networkPolicy.egress.objectStore.ports[0].port=8080"]
    assert store_ports(*sets) == [[{"port": 8080}]]


def test_the_notes_warn_when_aws_s3_is_out_of_reach(bin_dir: Path) -> None:
    warning = "WARNING: the object store is AWS S3"
    assert warning in install_notes(bin_dir, values=[MINIMAL_VALUES])  # the defaults: AWS S3, in-cluster peers
    for sets in (
        ["networkPolicy.egress.objectStore.to[0].ipBlock.cidr=203.0.113.0/24"],
        ["networkPolicy.egress.objectStore.to=null"],  # any address
        ["objectStore.s3.endpointUrl=http://minio.storage:9000"],
        ["networkPolicy.enabled=false"],
    ):
        assert warning not in install_notes(bin_dir, values=[MINIMAL_VALUES], sets=sets), sets


def test_external_vllm_and_extra_egress(bin_dir: Path) -> None:
    sets = [
        "vllm.externalUrl=http://vllm.serving:8001",
        "networkPolicy.extraEgress.vllm[0].ports[0].port=443",
        "networkPolicy.extraEgress.trainer[0].to[0].ipBlock.cidr=198.51.100.0/24",
    ]
    docs = render(bin_dir, values=[MINIMAL_VALUES], sets=sets)
    api = one(docs, "NetworkPolicy", "tun-tunery-api")["spec"]["egress"]
    assert {"ports": [{"port": 8001, "protocol": "TCP"}], "to": [{"namespaceSelector": {}}]} in api
    trainer = one(docs, "NetworkPolicy", "tun-tunery-trainer")["spec"]["egress"]
    assert trainer[-1] == {"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}


def test_vllm_is_not_exposed(bin_dir: Path) -> None:
    docs = render(bin_dir, values=[PRODUCTION_VALUES], sets=["api.service.type=LoadBalancer"])
    svc = one(docs, "Service", "tun-tunery-vllm")
    assert svc["spec"]["type"] == "ClusterIP" and not any("nodePort" in p for p in svc["spec"]["ports"])
    backends = {
        path["backend"]["service"]["name"]
        for ing in by_kind(docs, "Ingress")
        for rule in ing["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"tun-tunery-api"}
    ingress = one(docs, "NetworkPolicy", "tun-tunery-vllm")["spec"]["ingress"]
    assert [peer for rule in ingress for peer in rule["from"]] == [
        {"podSelector": {"matchLabels": one(docs, "Deployment", "tun-tunery-api")["spec"]["selector"]["matchLabels"]}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]


def test_trainers_reach_the_experiment_trackers_only_when_allowed(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """networkPolicy.egress.integrations (docs/integrations.md): off by default; on, trainer pods reach its peers at
    its ports (W&B's API on 443), and the other parts do not."""
    tracker = Address("198.51.100.9")
    sets = [*DEV_SETS, "networkPolicy.egress.integrations.enabled=true"]
    sets.append("networkPolicy.egress.integrations.to[0].ipBlock.cidr=198.51.100.0/24")
    docs = render(bin_dir, sets=sets)
    p = parts(docs, monkeypatch)
    assert can_connect(docs, p["trainer"], tracker, 443)
    assert not can_connect(docs, p["trainer"], tracker, 80)
    assert not can_connect(docs, p["trainer"], INTERNET, 443)
    assert not can_connect(docs, p["api"], tracker, 443)
    off = render(bin_dir, sets=DEV_SETS)
    assert not can_connect(off, parts(off, monkeypatch)["trainer"], tracker, 443)


def test_the_scheduler_reaches_public_webhook_endpoints_only(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """networkPolicy.egress.webhooks (docs/webhooks.md): on by default, the scheduler (whose leader sends the
    deliveries) reaches public addresses on 443 and 80, never a private one; no other part does; off, nothing."""
    docs = render(bin_dir, sets=DEV_SETS)
    p = parts(docs, monkeypatch)
    assert can_connect(docs, p["scheduler"], INTERNET, 443) and can_connect(docs, p["scheduler"], INTERNET, 80)
    assert not can_connect(docs, p["scheduler"], INTERNET, 8443)
    for private in ("10.1.2.3", "192.168.1.1", "169.254.169.254"):  # (443 is the Kubernetes API's: any address here)
        assert not can_connect(docs, p["scheduler"], Address(private), 80), private
    assert not can_connect(docs, p["api"], INTERNET, 443) and not can_connect(docs, p["trainer"], INTERNET, 443)
    off = render(bin_dir, sets=[*DEV_SETS, "networkPolicy.egress.webhooks.enabled=false"])
    assert not can_connect(off, parts(off, monkeypatch)["scheduler"], INTERNET, 80)
