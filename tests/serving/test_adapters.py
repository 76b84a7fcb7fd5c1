"""The adapter cache (serving/adapters.py): what a client learns when a model's objects are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.adapters import AdapterCache
from serving.errors import AdapterNotFound
from tunery.storage import LocalObjectStore


def test_a_missing_adapter_is_a_not_found_that_names_no_object_path(tmp_path: Path):
    store = LocalObjectStore(tmp_path / "objects")
    prefix = "jobs/ftjob-secretprefix/model/"
    store.put_bytes(prefix + "adapter_config.json", b"{}")  # the weights are missing
    cache = AdapterCache(store, tmp_path / "cache")
    with pytest.raises(AdapterNotFound) as err:
        cache.fetch("ft:tiny:personal::abc", prefix)
    assert "ft:tiny:personal::abc" in str(err.value)
    assert "ftjob-secretprefix" not in str(err.value) and "jobs/" not in str(err.value)
