"""The read routes' JSON (api/jsoncache.py): the same bytes as the objects the services build, and a change made
anywhere (another process's write to the metadata store included) is seen at once.

The REST read routes answer the services' ``*_json`` reads; gRPC and everything else use the objects. Both are
compared here on jobs (plain, with ``tunery``, queued with a queue position, metadata-filtered), events, files and
models, before and after changes written through a second engine, as another API replica or the scheduler would.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from api.context import AppContext, Tenant
from api.errors import NotFound
from api.jsoncache import JsonCache
from api.protocol.files import CreateFileRequest, ListFilesRequest
from api.protocol.jobs import CreateJob, ListJobEventsRequest, ListJobsRequest
from api.services.files import FileService
from api.services.jobs import JobService
from api.services.models import ModelService
from scheduler.reporting import servable_model
from tests.conftest import chat_lines
from tunery.audit import BOOTSTRAP
from tunery.db import Database, File, Job
from tunery.db.ops import add_event, now


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API alone (no scheduler): jobs stay as the API and the tests leave them."""
    from api.server import build
    from tunery.settings import Settings

    data = tmp_path_factory.mktemp("read-cache")
    settings = Settings(data_dir=data, demo_model=False, base_models={"m": "/nonexistent"}, allow_open=True)
    app, shutdown = build(settings, role="api")
    yield app
    shutdown()


@pytest.fixture(scope="module")
def ctx(app: Any) -> AppContext:
    c: AppContext = app.state.ctx
    return c


@pytest.fixture(scope="module")
def other(ctx: AppContext) -> Iterator[Database]:
    """The same metadata store through an engine of its own: another process's writes."""
    db = Database(ctx.db.url)
    yield db
    db.engine.dispose()


def services(ctx: AppContext, project: str | None = None) -> tuple[JobService, FileService, ModelService]:
    t = Tenant(ctx.settings.organization_id, project or ctx.settings.project_id)
    return JobService(ctx, t, BOOTSTRAP), FileService(ctx, t, BOOTSTRAP), ModelService(ctx, t, BOOTSTRAP)


def same(obj: Any, data: bytes) -> None:
    """``data`` is the object's JSON, byte for byte."""
    assert data == obj.model_dump_json().encode()


def test_every_json_read_is_the_objects_json_and_sees_each_change(ctx: AppContext, other: Database) -> None:
    jobs, files, models = services(ctx)
    train = files.create(CreateFileRequest(purpose="fine-tune", filename="t.jsonl"), io.BytesIO(chat_lines(12))).id
    plain = jobs.create(CreateJob(model="m", training_file=train, metadata={"team": "a"}))
    extended = jobs.create(CreateJob.model_validate({"model": "m", "training_file": train, "tunery": {"data": {}}}))
    with other.session() as s:
        for i in range(3):
            add_event(s, plain.id, f"step {i}", type="metrics", data={"step": i, "train_loss": 1.0 / (i + 1)})
        job = s.scalar(select(Job).where(Job.id == plain.id))
        assert job is not None
        s.add(servable_model(job, f"ft:m:org:{plain.id}", "fine_tuned", f"jobs/{plain.id}/model"))

    def check() -> None:
        for req in (ListJobsRequest(), ListJobsRequest(limit=1), ListJobsRequest(after=extended.id)):
            same(jobs.list(req), jobs.list_json(req))
        same(
            jobs.list(ListJobsRequest(metadata={"team": "a"})), jobs.list_json(ListJobsRequest(metadata={"team": "a"}))
        )
        for job_id in (plain.id, extended.id):
            same(jobs.retrieve(job_id), jobs.retrieve_json(job_id))
            for ev in (ListJobEventsRequest(), ListJobEventsRequest(limit=2)):
                same(jobs.events(job_id, ev), jobs.events_json(job_id, ev))
        for fr in (ListFilesRequest(), ListFilesRequest(purpose="fine-tune", order="asc"), ListFilesRequest(limit=1)):
            same(files.list(fr), files.list_json(fr))
        same(files.retrieve(train), files.retrieve_json(train))
        same(models.list(), models.list_json())

    check()
    check()  # now from the cache
    assert ctx.json_cache.hits > 0

    # Another process moves the extended job to the queue (its object then shows its queue position, read each
    # time), finishes the plain one, and validates the file: every JSON read shows it at once.
    with other.session() as s:
        for job in s.scalars(select(Job).where(Job.id.in_([plain.id, extended.id]))):
            if job.id == extended.id:
                job.status = "queued"
            else:
                job.status, job.finished_at, job.trained_tokens = "succeeded", now(), 1234
        f = s.scalar(select(File).where(File.id == train))
        assert f is not None
        f.status, f.status_details = "error", "line 3: no messages"
        add_event(s, plain.id, "Job succeeded")
    check()
    shown = json.loads(jobs.retrieve_json(plain.id))
    assert (shown["status"], shown["trained_tokens"]) == ("succeeded", 1234)
    assert json.loads(jobs.retrieve_json(extended.id))["tunery"]["scheduling"]["queue_position"] == 1
    assert json.loads(files.retrieve_json(train))["status_details"] == "line 3: no messages"
    assert json.loads(jobs.events_json(plain.id, ListJobEventsRequest()))["data"][0]["message"] == "Job succeeded"

    # A queue position is never kept: a job queued ahead of it moves it back.
    again = files.create(CreateFileRequest(purpose="fine-tune", filename="u.jsonl"), io.BytesIO(chat_lines(12))).id
    ahead = jobs.create(CreateJob.model_validate({"model": "m", "training_file": again, "tunery": {"data": {}}}))
    with other.session() as s:
        job = s.scalar(select(Job).where(Job.id == ahead.id))
        assert job is not None
        job.status, job.priority = "queued", 5
    assert json.loads(jobs.retrieve_json(extended.id))["tunery"]["scheduling"]["queue_position"] == 2
    check()


def test_json_reads_answer_only_the_tenants_objects(ctx: AppContext) -> None:
    jobs, files, _ = services(ctx)
    train = files.create(CreateFileRequest(purpose="fine-tune", filename="t.jsonl"), io.BytesIO(chat_lines(12))).id
    job = jobs.create(CreateJob(model="m", training_file=train))
    assert jobs.retrieve_json(job.id)  # cached now: another project still does not see it
    their_jobs, their_files, their_models = services(ctx, "proj_other")
    for read in (
        lambda: their_jobs.retrieve_json(job.id),
        lambda: their_jobs.events_json(job.id, ListJobEventsRequest()),
        lambda: their_files.retrieve_json(train),
        lambda: jobs.retrieve_json("ftjob-missing"),
    ):
        with pytest.raises(NotFound):
            read()
    assert json.loads(their_jobs.list_json(ListJobsRequest()))["data"] == []
    assert json.loads(their_files.list_json(ListFilesRequest()))["data"] == []
    assert [m["id"] for m in json.loads(their_models.list_json())["data"]] == ["m"]


def test_the_cache_keeps_the_most_recently_used_entries() -> None:
    cache = JsonCache(entries=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (b"1", None, b"3", 2)
    built: list[int] = []

    class Obj:
        def model_dump_json(self) -> str:
            built.append(1)
            return '{"x":1}'

    assert cache.json("d", Obj) == cache.json("d", Obj) == b'{"x":1}'  # type: ignore[arg-type]
    assert len(built) == 1
    off = JsonCache(entries=0)
    off.put("a", b"1")
    assert off.get("a") is None
