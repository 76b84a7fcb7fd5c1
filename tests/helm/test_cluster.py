"""The Helm chart against a live kube-apiserver (1.20 here): server-side dry run of every manifest, and the
scheduler's RBAC checked with `kubectl auth can-i` while impersonating its ServiceAccount.

Uses the real control plane of tests/kube (``kube_cluster``: skipped without the binaries, failed under CI=true).
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helm_tools import MINIMAL_VALUES, PRODUCTION_VALUES, render, run, tools_dir
from tests.kube.fixtures import kube_cluster  # noqa: F401 - fixture

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast

RELEASE = "tun"


@pytest.fixture(scope="module")
def cluster(kube_cluster: Any) -> Any:  # noqa: F811
    return kube_cluster


@pytest.fixture(scope="module")
def kubectl(cluster: Any) -> Any:
    binary = str(tools_dir() / "kubectl")

    def call(*args: str, check: bool = True) -> Any:
        return run([binary, "--kubeconfig", str(cluster.kubeconfig), *args], check=check)

    return call


@pytest.fixture(scope="module")
def server_version(cluster: Any, kubectl: Any) -> str:
    """The server's version as helm's --kube-version wants it (1.20.2)."""
    version = getattr(cluster, "server_version", None)
    if not version:
        version = json.loads(kubectl("version", "-o", "json", check=False).stdout)["serverVersion"]["gitVersion"]
    return str(version).lstrip("v").split("-")[0].split("+")[0]


@pytest.fixture
def namespaces(kubectl: Any) -> Iterator[tuple[str, str]]:
    """A release namespace and a training namespace, deleted afterwards."""
    suffix = secrets.token_hex(3)
    names = (f"helm-{suffix}", f"helm-{suffix}-training")
    for name in names:
        kubectl("create", "namespace", name)
    yield names
    kubectl("delete", "namespace", *names, "--wait=false", check=False)


def apply(kubectl: Any, docs: list[dict[str, Any]], *flags: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(docs, f)
        f.flush()
        return str(kubectl("apply", "-f", f.name, *flags).stdout)


@pytest.mark.parametrize("variant", ["production", "dev"])
def test_manifests_pass_a_server_side_dry_run(
    kubectl: Any, server_version: str, namespaces: tuple[str, str], variant: str
) -> None:
    ns, training = namespaces
    kwargs: dict[str, Any] = {"namespace": ns, "kube_version": server_version, "release": RELEASE}
    sets = [f"training.namespace={training}", "metrics.serviceMonitor.enabled=false"]  # no Prometheus CRDs here
    if variant == "production":
        kwargs["values"] = [PRODUCTION_VALUES]
    else:
        sets += [
            "postgresql.enabled=true",
            "postgresql.auth.password=pw",
            "vllm.enabled=true",
            "vllm.servedModelName=m",
            "config.baseModels.m=/models/base",
            "networkPolicy.enabled=true",
        ]
        sets += ["objectStore.s3.accessKeyId=AK", "objectStore.s3.secretAccessKey=SK", "auth.apiKeys={k1}"]
    docs = render(tools_dir(), sets=sets, **kwargs)
    out = apply(kubectl, docs, "--dry-run=server")
    for doc in docs:
        kind = doc["kind"].lower()
        assert f"{kind}" in out.lower() and doc["metadata"]["name"] in out, (doc["kind"], doc["metadata"]["name"], out)
    assert out.count("(server dry run)") == len(docs), out


# What scheduler/k8s.py does (it polls with list calls: no watch) and nothing more.
ALLOWED = [
    *[(verb, "jobs.batch") for verb in ("create", "get", "list", "delete")],
    ("list", "pods"),
    ("get", "pods", "--subresource=log"),
    ("list", "events"),
    ("create", "leases.coordination.k8s.io"),
    ("get", "leases.coordination.k8s.io/tunery-scheduler"),
    ("update", "leases.coordination.k8s.io/tunery-scheduler"),
    ("create", "services"),
    *[(verb, "secrets") for verb in ("create", "patch", "delete")],  # each run's token Secret
]

DENIED_IN_TRAINING_NAMESPACE = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("get", f"secrets/{RELEASE}-tunery-trainer"),
    ("create", "pods", "--subresource=exec"),
    ("create", "pods"),
    ("get", "pods"),
    ("delete", "pods"),
    ("watch", "pods"),
    ("watch", "jobs.batch"),
    ("update", "jobs.batch"),
    ("patch", "jobs.batch"),
    ("get", "events"),
    ("get", "configmaps"),
    ("get", "services"),
    ("update", "services"),
    ("delete", "services"),
    ("get", "leases.coordination.k8s.io/another-lease"),
    ("update", "leases.coordination.k8s.io/another-lease"),
    ("delete", "leases.coordination.k8s.io/tunery-scheduler"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
]

DENIED_CLUSTER_WIDE = [
    ("list", "nodes"),
    ("list", "namespaces"),
    ("list", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("list", "jobs.batch", "--all-namespaces"),
    ("list", "persistentvolumes"),
]


def test_scheduler_can_do_exactly_what_it_needs(kubectl: Any, namespaces: tuple[str, str]) -> None:
    ns, training = namespaces
    sets = [f"training.namespace={training}"]
    docs = render(tools_dir(), namespace=ns, release=RELEASE, values=[MINIMAL_VALUES], sets=sets)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "Secret")]
    apply(kubectl, rbac)

    def can(sa: str, namespace: str, *check: str) -> bool:
        out = kubectl(
            "auth",
            "can-i",
            *check,
            "-n",
            namespace,
            f"--as=system:serviceaccount:{ns}:{RELEASE}-tunery-{sa}",
            check=False,
        )
        assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
        return bool(out.stdout.strip() == "yes")

    wrong = [c for c in ALLOWED if not can("scheduler", training, *c)]
    assert not wrong, f"the scheduler may not: {wrong}"
    wrong = [c for c in DENIED_IN_TRAINING_NAMESPACE + DENIED_CLUSTER_WIDE if can("scheduler", training, *c)]
    assert not wrong, f"the scheduler may: {wrong}"
    # Nothing in the release namespace or any other: the Role is in the training namespace only.
    for other in (ns, "default", "kube-system"):
        wrong = [c for c in ALLOWED if can("scheduler", other, *c)]
        assert not wrong, f"the scheduler may, in {other}: {wrong}"
    # The API and the trainer pods have no RBAC at all.
    for sa in ("api", "trainer"):
        wrong = [c for c in ALLOWED if can(sa, training, *c) or can(sa, ns, *c)]
        assert not wrong, f"{sa} may: {wrong}"
