"""The two configurations the API suites run against (issue 5: "the same API test suite runs against both").

* ``embedded``: SQLite and the local object folder, as ``tunery serve`` runs on one machine;
* ``production``: PostgreSQL and S3 on a real SeaweedFS, the stores of a Helm install.

A module imports ``configuration``, ``configuration_object_store`` and ``configuration_metadata_store`` to run each
server test once per configuration (their skip/fail rules are the stores' own: skipped without the servers, failed
under CI=true). The Kubernetes trainer backend of the production configuration has its own end-to-end suite
(tests/scheduler/test_k8s.py), since a Kubernetes run needs the test kubelet.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["embedded", "production"])
def configuration(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(name="object_store")
def configuration_object_store(configuration: str) -> str:
    return "s3" if configuration == "production" else "local"


@pytest.fixture(name="metadata_store")
def configuration_metadata_store(configuration: str) -> str:
    return "postgresql" if configuration == "production" else "sqlite"
