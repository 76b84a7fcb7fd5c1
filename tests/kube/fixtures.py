"""Pytest fixtures of the Kubernetes tests (imported by tests/scheduler/test_k8s.py, not a conftest).

``kube_cluster``: the real control plane (session). ``kubelet``: the test kubelet with two 2-GPU nodes
(session). ``kube_namespace``: a fresh namespace per test, its Jobs and pods removed afterwards.
Without the binaries (``make kube`` builds them) the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator

import pytest

from tests.kube.cluster import Cluster, missing_binaries

NODES = {"gpu-node-1": 2, "gpu-node-2": 2}


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    missing = missing_binaries()
    if missing:
        reason = f"Kubernetes control plane not built ({', '.join(missing)} missing): run `make kube`"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("kube")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube_api(kube_cluster: Cluster):  # type: ignore[no-untyped-def]
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubelet(kube_api, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.kube.kubelet import TestKubelet

    k = TestKubelet(kube_api, tmp_path_factory.mktemp("kubelet"), NODES).start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def kube_namespace(kube_api, kubelet) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are admitted only once the namespace's default ServiceAccount exists (the controller makes it).
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(name).items:
        assert time.monotonic() < deadline, "no default ServiceAccount"
        time.sleep(0.2)
    yield name
    batch = client.BatchV1Api(kube_api)
    for job in batch.list_namespaced_job(name).items:
        batch.delete_namespaced_job(
            job.metadata.name, name, body=client.V1DeleteOptions(propagation_policy="Background")
        )
    core.delete_namespace(name)
