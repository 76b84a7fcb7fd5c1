"""The reads' encoded objects (api/encoded.py): the objects the services build, as JSON byte for byte and as the
gRPC messages built from them, and a change made anywhere (another process's write to the metadata store included)
is seen at once.

The REST and gRPC read routes answer the services' encoded reads (JSON, protobuf). They are compared here with the
objects on jobs (plain, with ``tunery``, queued with a queue position, metadata-filtered), events, files and models,
before and after changes written through a second engine, as another API replica or the scheduler would.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf.message import Message
from sqlalchemy import delete, select

from api.context import AppContext, Tenant
from api.encoded import ENTRY_OVERHEAD, JSON, EncodedCache, EncodedPage, Encoding
from api.errors import NotFound
from api.grpc.convert import encoding, list_message, page_message, to_message
from api.protocol.files import CreateFileRequest, FileList, ListFilesRequest
from api.protocol.jobs import (
    CreateJob,
    ListFineTuningJobEventsResponse,
    ListJobEventsRequest,
    ListJobsRequest,
    ListPaginatedFineTuningJobsResponse,
)
from api.protocol.models import ModelList
from api.services.files import FileService
from api.services.jobs import JobService
from api.services.models import ModelService
from scheduler.reporting import servable_model
from tests.conftest import chat_lines
from tunery.audit import BOOTSTRAP
from tunery.db import Database, File, Job, JobEvent
from tunery.db.ops import add_event, now
from tunery.v1 import files_pb2 as files_pb
from tunery.v1 import fine_tuning_pb2 as ft_pb
from tunery.v1 import models_pb2 as models_pb


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


# Each REST object's gRPC message, and its list's.
MESSAGES: dict[str, tuple[type[Message], type[Message] | None]] = {
    "FineTuningJob": (ft_pb.FineTuningJob, ft_pb.ListJobsResponse),
    "FineTuningJobEvent": (ft_pb.FineTuningJobEvent, ft_pb.ListEventsResponse),
    "FileObject": (files_pb.File, files_pb.ListFilesResponse),
}


def same(obj: Any, read: Callable[[Encoding], bytes | EncodedPage]) -> None:
    """What ``read`` answers is the object, encoded: its JSON byte for byte (a page's, as REST wraps it), and the
    message gRPC would build from it (a page's, as gRPC wraps it)."""
    data = read(JSON)
    assert (type(obj).json_of(data) if isinstance(data, EncodedPage) else data) == obj.model_dump_json().encode()
    item = (obj.data[0] if obj.data else None) if hasattr(obj, "data") else obj
    if item is None:
        return
    cls, list_cls = MESSAGES[type(item).__name__]
    data = read(encoding(cls))
    if isinstance(data, EncodedPage):
        assert list_cls is not None
        assert list_cls.FromString(page_message(list_cls, data)) == to_message(obj, list_cls)
    else:
        assert cls.FromString(data) == to_message(obj, cls)


class Json:
    """The services' encoded reads as REST answers them."""

    def __init__(self, jobs: JobService, files: FileService, models: ModelService):
        self.jobs, self.files, self.models = jobs, files, models

    def job(self, job_id: str) -> Any:
        return json.loads(self.jobs.retrieve_encoded(job_id, JSON))

    def jobs_page(self, req: ListJobsRequest) -> Any:
        return json.loads(ListPaginatedFineTuningJobsResponse.json_of(self.jobs.list_encoded(req, JSON)))

    def events(self, job_id: str) -> Any:
        page = self.jobs.events_encoded(job_id, ListJobEventsRequest(), JSON)
        return json.loads(ListFineTuningJobEventsResponse.json_of(page))

    def file(self, file_id: str) -> Any:
        return json.loads(self.files.retrieve_encoded(file_id, JSON))

    def files_page(self) -> Any:
        return json.loads(FileList.json_of(self.files.list_encoded(ListFilesRequest(), JSON)))

    def models_list(self) -> Any:
        return json.loads(ModelList.json_of(self.models.list_encoded(JSON)))


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
        pages = (ListJobsRequest(), ListJobsRequest(limit=1), ListJobsRequest(after=extended.id))
        for req in (*pages, ListJobsRequest(metadata={"team": "a"})):
            same(jobs.list(req), lambda enc, req=req: jobs.list_encoded(req, enc))
        for job_id in (plain.id, extended.id):
            same(jobs.retrieve(job_id), lambda enc, i=job_id: jobs.retrieve_encoded(i, enc))
            for ev in (ListJobEventsRequest(), ListJobEventsRequest(limit=2)):
                same(jobs.events(job_id, ev), lambda enc, i=job_id, ev=ev: jobs.events_encoded(i, ev, enc))
        for fr in (ListFilesRequest(), ListFilesRequest(purpose="fine-tune", order="asc"), ListFilesRequest(limit=1)):
            same(files.list(fr), lambda enc, fr=fr: files.list_encoded(fr, enc))
        same(files.retrieve(train), lambda enc: files.retrieve_encoded(train, enc))
        assert ModelList.json_of(models.list_encoded(JSON)) == models.list().model_dump_json().encode()
        listed = list_message(models_pb.ListModelsResponse, models.list_encoded(encoding(models_pb.Model)))
        assert models_pb.ListModelsResponse.FromString(listed) == to_message(
            models.list(), models_pb.ListModelsResponse
        )

    check()
    check()  # now from the cache
    assert ctx.encoded.hits > 0
    read = Json(jobs, files, models)

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
    shown = read.job(plain.id)
    assert (shown["status"], shown["trained_tokens"]) == ("succeeded", 1234)
    assert read.job(extended.id)["tunery"]["scheduling"]["queue_position"] == 1
    assert read.file(train)["status_details"] == "line 3: no messages"
    assert read.events(plain.id)["data"][0]["message"] == "Job succeeded"

    # A queue position is never kept: a job queued ahead of it moves it back.
    again = files.create(CreateFileRequest(purpose="fine-tune", filename="u.jsonl"), io.BytesIO(chat_lines(12))).id
    ahead = jobs.create(CreateJob.model_validate({"model": "m", "training_file": again, "tunery": {"data": {}}}))
    with other.session() as s:
        job = s.scalar(select(Job).where(Job.id == ahead.id))
        assert job is not None
        job.status, job.priority = "queued", 5
    assert read.job(extended.id)["tunery"]["scheduling"]["queue_position"] == 2
    check()


def test_json_reads_answer_only_the_tenants_objects(ctx: AppContext) -> None:
    jobs, files, models = services(ctx)
    mine = Json(jobs, files, models)
    train = files.create(CreateFileRequest(purpose="fine-tune", filename="t.jsonl"), io.BytesIO(chat_lines(12))).id
    job = jobs.create(CreateJob(model="m", training_file=train))
    assert mine.job(job.id) and mine.file(train)  # kept now: another project still does not see them
    theirs = Json(*services(ctx, "proj_other"))
    for read in (
        lambda: theirs.job(job.id),
        lambda: theirs.events(job.id),
        lambda: theirs.file(train),
        lambda: mine.job("ftjob-missing"),
    ):
        with pytest.raises(NotFound):
            read()
    assert theirs.jobs_page(ListJobsRequest())["data"] == theirs.files_page()["data"] == []
    assert [m["id"] for m in theirs.models_list()["data"]] == ["m"]
    # A job of the tenant's without events: an empty page (its page and ownership are read in one statement, the
    # ownership again alone when the page is empty); still none for another project.
    with ctx.db.session() as s:
        s.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
    assert mine.events(job.id)["data"] == []
    with pytest.raises(NotFound):
        theirs.events(job.id)


def test_the_cache_keeps_the_most_recently_used_entries() -> None:
    cache = EncodedCache(max_bytes=2 * (1 + ENTRY_OVERHEAD))  # room for two entries of one byte
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (b"1", None, b"3", 2)
    assert cache.bytes == 2 * (1 + ENTRY_OVERHEAD)
    cache.put("a", b"12")  # a larger entry: room for it alone
    assert (cache.get("a"), cache.get("c"), len(cache), cache.bytes) == (b"12", None, 1, 2 + ENTRY_OVERHEAD)
    cache.put("big", b"x" * (2 * ENTRY_OVERHEAD + 3))  # larger than the whole cache: not kept, nothing evicted
    assert (cache.get("big"), cache.get("a")) == (None, b"12")
    built: list[int] = []

    class Obj:
        def model_dump_json(self) -> str:
            built.append(1)
            return '{"x":1}'

    assert cache.encoded(JSON, ("d",), Obj) == cache.encoded(JSON, ("d",), Obj) == b'{"x":1}'  # type: ignore[arg-type]
    assert len(built) == 1
    off = EncodedCache(max_bytes=0)
    off.put("a", b"1")
    assert off.get("a") is None
