"""API keys (api/auth.py): a missing or wrong key is a 401 with the body OpenAI answers, and a right one gets in."""

from __future__ import annotations

import openai
import pytest

from tests.schema import validate

KEY = "sk-tunery-test-0123456789abcdef"


def test_401_bodies_are_openais(tiny_server_factory):
    srv = tiny_server_factory(api_keys=KEY)
    missing = srv.http.get("/v1/files")
    assert missing.status_code == 401
    validate(missing.json(), "ErrorResponse")
    err = missing.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", None, None)
    assert err["message"].startswith("You didn't provide an API key.")

    wrong_key = "sk-someone-elses-key-9876543210"
    wrong = srv.http.get("/v1/files", headers={"authorization": f"Bearer {wrong_key}"})
    assert wrong.status_code == 401
    err = wrong.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_api_key")
    assert err["message"] == "Incorrect API key provided: sk-som***...3210."
    assert wrong_key not in wrong.text and KEY not in wrong.text

    with pytest.raises(openai.AuthenticationError) as e:
        srv.client.with_options(api_key=wrong_key, max_retries=0).files.list()
    assert e.value.code == "invalid_api_key"
    assert srv.client.with_options(api_key=KEY).files.list().data == []


def test_a_key_with_non_ascii_characters_is_a_401_not_a_500(tiny_server_factory):
    """A header may carry any byte: comparing such a key in constant time must not fail (hmac refuses non-ASCII str)."""
    srv = tiny_server_factory(api_keys=KEY)
    for token in ("sk-caf\xe9-0123456789abcdef".encode("latin-1"), b"\xff" * 20):
        r = srv.http.get("/v1/files", headers={"authorization": b"Bearer " + token})
        assert r.status_code == 401, r.text
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "invalid_api_key"
