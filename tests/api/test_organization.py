"""The administration API (api/organization.py) through the OpenAI SDK's ``client.admin.organization``: projects,
service accounts (whose key is shown once), project API keys and admin API keys; only an admin key (or a project's
owner, for its own project) may call it."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.metadata_stores import every_metadata_store  # noqa: F401 (each server test runs on SQLite and PostgreSQL)
from tests.schema import validate
from tunery.tenancy import key_digest

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"


def sdk(srv, key: str) -> OpenAI:  # type: ignore[no-untyped-def]
    return OpenAI(base_url=f"{srv.base_url}/v1", api_key=key, admin_api_key=key, max_retries=0)


def test_projects_service_accounts_and_keys(tiny_server_factory):
    srv = tiny_server_factory(api_keys=BOOTSTRAP)
    org = sdk(srv, BOOTSTRAP).admin.organization

    listed = org.projects.list()
    assert [p.id for p in listed.data] == ["proj_default"]  # the default project has its row from the start
    project = org.projects.create(name="Team A")
    assert project.id.startswith("proj_") and project.status == "active" and project.archived_at is None
    assert org.projects.retrieve(project.id).name == "Team A"
    assert org.projects.update(project.id, name="Team A2").name == "Team A2"

    account = org.projects.service_accounts.create(project.id, name="ci")
    assert account.role == "member" and account.api_key is not None
    value = account.api_key.value
    assert value.startswith("sk-svcacct-")
    assert [a.id for a in org.projects.service_accounts.list(project.id).data] == [account.id]
    assert org.projects.service_accounts.retrieve(account.id, project_id=project.id).name == "ci"

    keys = org.projects.api_keys.list(project.id)
    assert [k.id for k in keys.data] == [account.api_key.id]
    key = org.projects.api_keys.retrieve(account.api_key.id, project_id=project.id)
    assert key.redacted_value == f"sk-svcacct-...{value[-4:]}" and key.owner.service_account is not None
    raw = srv.http.get(
        f"/v1/organization/projects/{project.id}/api_keys", headers={"authorization": f"Bearer {BOOTSTRAP}"}
    )
    assert value not in raw.text and "key_hash" not in raw.text  # never the value, never its hash
    assert key_digest(value) not in raw.text

    # The new key works, on its own project: an empty one.
    member = sdk(srv, value)
    assert member.files.list().data == []
    # The member key is no admin.
    with pytest.raises(openai.PermissionDeniedError) as e:
        member.admin.organization.projects.list()
    assert e.value.status_code == 403 and "insufficient permissions" in e.value.message
    validate(e.value.response.json(), "ErrorResponse")

    # A new role applies to the account's key at once: a reader may not upload.
    changed = org.projects.service_accounts.update(account.id, project_id=project.id, extra_body={"role": "reader"})
    assert changed.role == "reader" and changed.name == "ci"
    with pytest.raises(openai.PermissionDeniedError):
        member.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
    assert org.projects.service_accounts.update(account.id, project_id=project.id, role="member").role == "member"
    assert member.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune").id

    # Revoking the key stops it at once.
    assert org.projects.api_keys.delete(key.id, project_id=project.id).deleted
    with pytest.raises(openai.AuthenticationError):
        member.files.list()
    with pytest.raises(openai.NotFoundError):
        org.projects.api_keys.retrieve(key.id, project_id=project.id)

    # Deleting a service account revokes its key; archiving a project stops its keys.
    other = org.projects.service_accounts.create(project.id, name="other")
    assert other.api_key is not None
    assert sdk(srv, other.api_key.value).models.list().data
    archived = org.projects.archive(project.id)
    assert archived.status == "archived" and archived.archived_at is not None
    with pytest.raises(openai.AuthenticationError):
        sdk(srv, other.api_key.value).models.list()
    assert [p.id for p in org.projects.list().data] == ["proj_default"]
    assert len(org.projects.list(include_archived=True).data) == 2
    with pytest.raises(openai.BadRequestError):
        org.projects.service_accounts.create(project.id, name="late")
    with pytest.raises(openai.BadRequestError):
        org.projects.archive("proj_default")

    with pytest.raises(openai.NotFoundError):
        org.projects.retrieve("proj_nothing")
    with pytest.raises(openai.NotFoundError):
        org.projects.service_accounts.list("proj_nothing")


def test_admin_api_keys(tiny_server_factory):
    srv = tiny_server_factory(api_keys=BOOTSTRAP)
    org = sdk(srv, BOOTSTRAP).admin.organization
    created = org.admin_api_keys.create(name="ops")
    assert created.value.startswith("sk-admin-") and created.redacted_value == f"sk-admin-...{created.value[-4:]}"
    listed = org.admin_api_keys.list()
    assert [k.id for k in listed.data] == [created.id]
    assert all(not getattr(k, "value", None) for k in listed.data)
    assert org.admin_api_keys.retrieve(created.id).name == "ops"
    auth = {"authorization": f"Bearer {BOOTSTRAP}"}
    for path in ("/v1/organization/admin_api_keys", f"/v1/organization/admin_api_keys/{created.id}"):
        raw = srv.http.get(path, headers=auth).text
        assert created.value not in raw and key_digest(created.value) not in raw and "key_hash" not in raw

    # A stored admin key administers the organization, and acts on the default project elsewhere.
    admin = sdk(srv, created.value)
    assert admin.admin.organization.projects.list().data[0].id == "proj_default"
    assert admin.files.list().data == []

    assert org.admin_api_keys.delete(created.id).deleted
    with pytest.raises(openai.AuthenticationError):
        admin.files.list()
    with pytest.raises(openai.NotFoundError):
        org.admin_api_keys.retrieve(created.id)


def test_an_owner_manages_its_own_project_only(tiny_server_factory):
    srv = tiny_server_factory(api_keys=BOOTSTRAP)
    org = sdk(srv, BOOTSTRAP).admin.organization
    a, b = org.projects.create(name="A"), org.projects.create(name="B")
    owner = org.projects.service_accounts.with_raw_response.create(a.id, name="lead", extra_body={"role": "owner"})
    owner_key = owner.parse().api_key
    assert owner.parse().role == "owner" and owner_key is not None
    mine = sdk(srv, owner_key.value).admin.organization
    made = mine.projects.service_accounts.create(a.id, name="bot")
    assert made.role == "member"
    assert {k.id for k in mine.projects.api_keys.list(a.id).data} == {owner_key.id, made.api_key.id}  # type: ignore[union-attr]
    for call in (
        lambda: mine.projects.service_accounts.list(b.id),
        lambda: mine.projects.api_keys.list(b.id),
        lambda: mine.projects.list(),
        lambda: mine.projects.archive(a.id),
        lambda: mine.admin_api_keys.list(),
    ):
        with pytest.raises(openai.PermissionDeniedError):
            call()


def test_the_open_embedded_mode_closes_once_a_key_is_issued(tiny_server_factory):
    srv = tiny_server_factory()  # no TUNERY_API_KEYS: open, as before tenancy
    anyone = sdk(srv, "anything")
    assert anyone.files.list().data == []
    created = anyone.admin.organization.admin_api_keys.create(name="first")
    with pytest.raises(openai.AuthenticationError):
        anyone.files.list()
    assert sdk(srv, created.value).files.list().data == []
    missing = srv.http.get("/v1/files")
    assert missing.status_code == 401 and missing.json()["error"]["message"].startswith("You didn't provide")
