"""API keys (api/auth.py): a missing or wrong key is a 401 with the body OpenAI answers, and a right one gets in; a
stored key stops at once when it expires, a reader's write is a 403 before its body is read."""

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


def test_stored_keys_expire_and_are_revoked_at_once_and_bootstrap_keys_keep_working(tiny_server_factory):
    from sqlalchemy import update

    from tunery.db import ApiKey
    from tunery.db.ops import now

    srv = tiny_server_factory(api_keys=KEY)
    admin = {"authorization": f"Bearer {KEY}"}
    project = srv.http.post("/v1/organization/projects", json={"name": "A"}, headers=admin).json()["id"]
    made = srv.http.post(
        f"/v1/organization/projects/{project}/service_accounts",
        json={"name": "ci", "expires_in_seconds": 3600},
        headers=admin,
    ).json()
    value, key_id = made["api_key"]["value"], made["api_key"]["id"]
    assert made["api_key"]["expires_at"] > now()
    mine = {"authorization": f"Bearer {value}"}
    assert srv.http.get("/v1/files", headers=mine).status_code == 200
    with srv.app.state.ctx.db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(expires_at=now() - 1))
    expired = srv.http.get("/v1/files", headers=mine)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "invalid_api_key"
    assert value not in expired.text
    # The TUNERY_API_KEYS key is still the default project's admin, next to the stored keys.
    assert srv.client.with_options(api_key=KEY).files.list().data == []
    assert srv.http.get("/v1/organization/projects", headers=admin).status_code == 200


def test_a_readers_write_gets_its_403_before_the_body_is_read(tiny_server_factory):
    from tests import raw_http
    from tests.raw_http import MiB, filler

    srv = tiny_server_factory(api_keys=KEY)
    admin = {"authorization": f"Bearer {KEY}"}
    made = srv.http.post(
        "/v1/organization/projects/proj_default/service_accounts", json={"name": "r", "role": "reader"}, headers=admin
    ).json()
    reader = {"authorization": f"Bearer {made['api_key']['value']}"}
    ctype, before, after = raw_http.multipart("file", purpose="fine-tune")
    body = [before, *filler(64 * MiB, b"x" * MiB), after]
    answer = raw_http.send(
        srv.settings.port, "POST", "/v1/files", {"content-type": ctype, **reader}, body, chunked=True
    )
    assert answer.status == 403, answer.body[:300]
    validate(answer.json(), "ErrorResponse")
    assert answer.json()["error"]["message"].startswith("You have insufficient permissions for this operation.")
    assert answer.sent < 16 * MiB
    # The reader reads the default project, as the bootstrap key does.
    assert srv.http.get("/v1/files", headers=reader).status_code == 200
