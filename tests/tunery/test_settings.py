"""The rules tunery/settings.py decides: which roles may start open (without API keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunery.settings import ROLES, Settings


@pytest.mark.parametrize(
    ("role", "settings", "refused"),
    [
        ("all", {}, False),  # the embedded mode: one box, open until keys are set
        ("api", {}, True),  # deployed on its own: no keys, no start
        ("api", {"api_keys": ["sk-a"]}, False),
        ("api", {"allow_open": True}, False),  # open on purpose
        ("api", {"api_keys": ["sk-a"], "allow_open": True}, False),  # the keys still apply
        ("scheduler", {}, False),  # answers no API request
    ],
)
def test_only_the_api_role_needs_keys_or_an_explicit_open_setting(role, settings, refused):
    assert role in ROLES
    refusal = Settings(**settings).open_access_refusal(role)
    assert (refusal is not None) is refused
    if refused:
        assert "TUNERY_API_KEYS" in refusal and "TUNERY_ALLOW_OPEN=true" in refusal


def test_a_store_that_has_issued_keys_lets_the_api_role_start():
    assert Settings().open_access_refusal("api", keys_issued=True) is None
    assert Settings().open_access_refusal("api", keys_issued=False) is not None


def test_allow_open_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("TUNERY_API_KEYS", raising=False)
    monkeypatch.setenv("TUNERY_ALLOW_OPEN", "true")
    assert Settings().open_access_refusal("api") is None
    monkeypatch.setenv("TUNERY_ALLOW_OPEN", "false")
    assert Settings().open_access_refusal("api") is not None
    monkeypatch.setenv("TUNERY_API_KEYS", "sk-a, sk-b")
    assert Settings().api_keys == ["sk-a", "sk-b"] and Settings().open_access_refusal("api") is None


def test_the_read_threads_follow_the_metadata_store(tmp_path: Path) -> None:
    """None on SQLite (its reads run on the event loop), 8 on PostgreSQL (its reads wait on the network); a setting
    wins."""
    assert Settings(data_dir=tmp_path).resolved_api_read_threads == 0
    assert Settings(data_dir=tmp_path, database_url="postgresql://h/db").resolved_api_read_threads == 8
    assert Settings(data_dir=tmp_path, api_read_threads=5).resolved_api_read_threads == 5
