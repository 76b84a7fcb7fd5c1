"""Per-project quotas through a real server (docs/tenancy.md, "Quotas and fair scheduling"): request rate limits
with OpenAI's 429 and headers, the stored-bytes quota under concurrent uploads, the running-jobs limit when 20 jobs
are created at once, a project's own limits through the administration API, and a job's priority and queue position.

The rate limiter's clock is the only thing moved by hand (``rate_limiter.clock``), so refills are exact without
sleeping. The "trainer" of the 20-jobs test is a shell script standing in for ``python -m trainer``, as in
tests/scheduler/test_claims.py: it records when it starts and ends, sleeps, and exits without reporting."""

from __future__ import annotations

import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.api.test_organization import BOOTSTRAP, sdk
from tests.configurations import (  # noqa: F401 (the server tests that touch the stores run in both configurations)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, chat_lines
from tests.stores import stored_keys


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def second_project(srv, **limits: int | None) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A new project (with ``limits`` of its own) and its member's key."""
    org = sdk(srv, BOOTSTRAP).admin.organization
    project = org.projects.create(name="B", extra_body={"tunery": {"limits": limits}} if limits else None)
    account = org.projects.service_accounts.create(project.id, name="b")
    return project.id, account.api_key.value


@pytest.mark.parametrize("configuration", ["embedded"], indirect=True)
def test_rate_limit_is_openais_429_with_headers_and_refills(tiny_server_factory) -> None:
    srv = tiny_server_factory(api_keys=BOOTSTRAP, project_requests_per_minute=3)
    limiter = srv.app.state.ctx.rate_limiter
    now = [1000.0]
    limiter.clock = lambda: now[0]
    http = httpx.Client(base_url=srv.base_url, headers=auth(BOOTSTRAP), timeout=30)

    seen = []
    for _ in range(3):
        r = http.get("/v1/files")
        assert r.status_code == 200
        seen.append((r.headers["x-ratelimit-remaining-requests"], r.headers["x-ratelimit-reset-requests"]))
        assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert seen == [("2", "20s"), ("1", "40s"), ("0", "1m0s")]  # one token every 20 s

    r = http.get("/v1/files")
    assert r.status_code == 429
    assert r.json() == {
        "error": {
            "message": "Rate limit reached for requests in project proj_default on requests per min (RPM): Limit 3, "
            "Used 3, Requested 1. Please try again in 20s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("20", "20000")
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    # Refused before the body is read: a large body changes nothing.
    assert http.post("/v1/files", content=b"x" * 100_000).status_code == 429

    # The SDK, told not to retry, raises RateLimitError with OpenAI's fields.
    client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key=BOOTSTRAP, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        client.files.list()
    assert (err.value.status_code, err.value.code, err.value.type) == (429, "rate_limit_exceeded", "requests")

    now[0] += 10  # half a token
    assert http.get("/v1/files").headers["retry-after"] == "10"
    now[0] += 10  # one token
    r = http.get("/v1/files")
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert http.get("/v1/files").status_code == 429
    now[0] += 600  # full again, never past the limit
    assert http.get("/v1/files").headers["x-ratelimit-remaining-requests"] == "2"

    # Another project has its own bucket: the first one's exhaustion does not touch it. Its own limit (set through
    # the administration API, which is never rate limited) is 1 a minute.
    assert [http.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]
    project, key = second_project(srv, requests_per_minute=1)
    other = httpx.Client(base_url=srv.base_url, headers=auth(key), timeout=30)
    r = other.get("/v1/files")
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "1"
    r = other.get("/v1/files")
    assert r.status_code == 429 and f"in project {project} " in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
    # Unlimited (0) for the second project: no bucket, no headers. Within a second of the change.
    sdk(srv, BOOTSTRAP).admin.organization.projects.update(
        project, extra_body={"tunery": {"limits": {"requests_per_minute": 0}}}
    )
    limiter._limits.clear()  # the once-a-second reread, without waiting for it
    r = other.get("/v1/files")
    assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers


@pytest.mark.parametrize("configuration", ["embedded"], indirect=True)
def test_a_projects_limits_through_the_administration_api(tiny_server_factory) -> None:
    srv = tiny_server_factory(api_keys=BOOTSTRAP, project_max_concurrent_jobs=4)
    org = sdk(srv, BOOTSTRAP).admin.organization
    default = {"max_concurrent_jobs": 4, "gpu_quota": 0, "max_stored_bytes": 0, "requests_per_minute": 0}
    assert org.projects.retrieve("proj_default").model_extra["tunery"] == {"limits": default}
    made = org.projects.create(name="C", extra_body={"tunery": {"limits": {"max_stored_bytes": 1000}}})
    assert made.model_extra["tunery"]["limits"] == {**default, "max_stored_bytes": 1000}
    # A field left out is kept; null gives back the default; 0 is the project's own "unlimited".
    body = {"tunery": {"limits": {"max_concurrent_jobs": 0}}}
    changed = org.projects.update(made.id, name="C", extra_body=body)
    assert changed.model_extra["tunery"]["limits"] == {**default, "max_stored_bytes": 1000, "max_concurrent_jobs": 0}
    r = srv.http.post(
        f"/v1/organization/projects/{made.id}",
        json={"tunery": {"limits": {"max_stored_bytes": None}}},
        headers=auth(BOOTSTRAP),
    )
    assert r.status_code == 200 and r.json()["name"] == "C"
    assert r.json()["tunery"]["limits"] == {**default, "max_concurrent_jobs": 0}
    for bad, param in (
        ({"gpu_quota": -1}, "tunery.limits.gpu_quota"),
        ({"max_concurrent_jobs": 2**31}, "tunery.limits.max_concurrent_jobs"),
        ({"max_stored_bytes": 2**63}, "tunery.limits.max_stored_bytes"),
        ({"rpm": 3}, "tunery.limits.rpm"),
    ):
        r = srv.http.post(
            f"/v1/organization/projects/{made.id}", json={"tunery": {"limits": bad}}, headers=auth(BOOTSTRAP)
        )
        assert (r.status_code, r.json()["error"]["param"]) == (400, param)


def test_stored_bytes_quota_under_concurrent_uploads(tiny_server_factory) -> None:
    """20 files of 1500 bytes sent at once into a quota of 10000: exactly 6 are stored, the others refused with the
    400 before a byte of theirs reached the object store. Open uploads count as declared."""
    srv = tiny_server_factory(project_max_stored_bytes=10_000)
    data = b"x" * 1500

    def send(i: int) -> httpx.Response:
        with httpx.Client(base_url=srv.base_url, timeout=60) as c:
            return c.post("/v1/files", files={"file": (f"f{i}.txt", data)}, data={"purpose": "user_data"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(ok) == 6, [r.json() for r in answers]
    for r in refused:
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "storage_quota_exceeded",
            "file",
        )
        assert "of its 10000" in error["message"]
    assert sum(f.bytes for f in srv.client.files.list().data) == 9000
    assert len(stored_keys(srv, "files/")) == 6  # nothing of a refused file was stored
    with pytest.raises(openai.BadRequestError) as err:
        srv.client.files.create(file=("f.txt", data), purpose="user_data")
    assert err.value.code == "storage_quota_exceeded"

    # An upload declares its bytes: they count from its creation, and it is refused past the quota.
    with pytest.raises(openai.BadRequestError) as err:
        srv.client.uploads.create(bytes=1001, filename="u.txt", mime_type="text/plain", purpose="user_data")
    assert (err.value.code, err.value.param) == ("storage_quota_exceeded", "bytes")
    upload = srv.client.uploads.create(bytes=1000, filename="u.txt", mime_type="text/plain", purpose="user_data")
    with pytest.raises(openai.BadRequestError):
        srv.client.files.create(file=("f.txt", b"y"), purpose="user_data")  # full: 9000 + 1000 declared
    srv.client.uploads.cancel(upload.id)
    srv.client.files.delete(ok[0].json()["id"])  # deleting makes room again
    assert srv.client.files.create(file=("f.txt", data), purpose="user_data").bytes == 1500


FAKE_TRAINER = """#!/bin/sh
# Called as: <this> -m trainer --spec <ref>. Records its start and end (epoch ns), runs a moment, reports nothing.
echo "start $(date +%s%N) $4" >> {log}
sleep 0.5
echo "end $(date +%s%N) $4" >> {log}
"""


def test_twenty_jobs_created_at_once_never_run_past_the_projects_limit(tiny_server_factory, tmp_path: Path) -> None:
    log = tmp_path / "runs.txt"
    trainer = tmp_path / "fake-trainer.sh"
    trainer.write_text(FAKE_TRAINER.format(log=log))
    trainer.chmod(trainer.stat().st_mode | stat.S_IEXEC)
    srv = tiny_server_factory(
        trainer_python=str(trainer), max_concurrent_runs=8, project_max_concurrent_jobs=2, max_run_retries=0
    )
    train = srv.client.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune").id

    def create(_: int) -> str:
        return srv.client.fine_tuning.jobs.create(model=TINY, training_file=train).id

    with ThreadPoolExecutor(20) as pool:
        job_ids = list(pool.map(create, range(20)))
    for job_id in job_ids:
        srv.wait_job(job_id, {"failed", "succeeded", "cancelled"}, timeout=240)
    events = sorted((int(t), kind) for kind, t, _ in (line.split(" ", 2) for line in log.read_text().splitlines()))
    running = most = 0
    for _, kind in events:  # at equal times an end sorts before a start
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert len([e for e in events if e[1] == "start"]) == 20  # each job ran once
    assert most == 2


@pytest.mark.parametrize("configuration", ["embedded"], indirect=True)
def test_priority_and_queue_position_are_in_the_job_object(tiny_server_factory) -> None:
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0)  # nothing launches: the jobs stay queued
    client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key=BOOTSTRAP, max_retries=0)
    train = client.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune").id

    def create(c: openai.OpenAI, file_id: str, priority: int | None = None) -> str:
        extra = {"tunery": {"scheduling": {"priority": priority}} if priority is not None else {}}
        return c.fine_tuning.jobs.create(model=TINY, training_file=file_id, extra_body=extra).id

    a_old, a_high, a_new = create(client, train), create(client, train, 7), create(client, train)
    plain = client.fine_tuning.jobs.create(model=TINY, training_file=train).id
    _, key = second_project(srv)
    other = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key=key, max_retries=0)
    b_job = create(other, other.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune").id)
    for c, job_id in ((client, a_old), (client, a_high), (client, a_new), (client, plain), (other, b_job)):
        deadline = time.monotonic() + 60
        while c.fine_tuning.jobs.retrieve(job_id).status != "queued" and time.monotonic() < deadline:
            time.sleep(0.3)

    def scheduling(c: openai.OpenAI, job_id: str) -> dict:  # type: ignore[type-arg]
        return c.fine_tuning.jobs.retrieve(job_id).model_extra["tunery"]["scheduling"]  # type: ignore[no-any-return]

    # Default project: a_high (priority 7), then a_old, a_new, the plain job by age; project B's one job comes
    # second, round-robin. The plain job (no `tunery` in its body) has OpenAI's fields only, but takes its place.
    assert scheduling(client, a_high) == {"priority": 7, "queue_position": 1}
    assert scheduling(other, b_job) == {"priority": 0, "queue_position": 2}
    assert scheduling(client, a_old) == {"priority": 0, "queue_position": 3}
    assert scheduling(client, a_new) == {"priority": 0, "queue_position": 4}
    assert "tunery" not in (client.fine_tuning.jobs.retrieve(plain).model_extra or {})
    listed = {j.id: j.model_extra.get("tunery") for j in client.fine_tuning.jobs.list().data}
    assert listed[a_new]["scheduling"]["queue_position"] == 4 and listed[plain] is None
    cancelled = client.fine_tuning.jobs.cancel(a_high).model_extra["tunery"]["scheduling"]
    assert cancelled == {"priority": 7, "queue_position": None}
    assert scheduling(other, b_job)["queue_position"] == 2  # after a_old now, the older head of the two

    for bad in (101, -101, "high"):
        r = srv.http.post(
            "/v1/fine_tuning/jobs",
            json={"model": TINY, "training_file": train, "tunery": {"scheduling": {"priority": bad}}},
            headers=auth(BOOTSTRAP),
        )
        assert (r.status_code, r.json()["error"]["param"]) == (400, "tunery.scheduling.priority")
