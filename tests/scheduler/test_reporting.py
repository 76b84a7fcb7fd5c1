"""The trainer reporting service against forged reports (over real gRPC, on a real metadata store): the run token is
checked before anything else and gives no oracle, every object key a report names is confined to the job's own
prefix (the results file's is the server's), event data is parsed only after the token check and bounded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from scheduler.reporting import MAX_EVENT_DATA, ReportingServer, ReportingService, event_data, token_matches
from tunery import ids, layout
from tunery.db import Database, File, FineTunedModel, Job, JobEvent
from tunery.db.ops import now
from tunery.storage import LocalObjectStore
from tunery.v1 import reporting_pb2 as pb
from tunery.v1 import reporting_pb2_grpc as pb_grpc

TOKEN = "run-token-secret"


def a_job(job_id: str, status: str = "running", token: str | None = TOKEN) -> Job:
    return Job(
        id=job_id,
        organization_id="org",
        project_id="proj",
        created_at=now(),
        started_at=now(),
        status=status,
        model="tiny",
        base_model="tiny",
        training_file="file-train",
        seed=1,
        method={"type": "supervised"},
        hyperparameters={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
        result_files=[],
        attempts=1,
        cancel_requested=False,
        fine_tuned_model=f"ft:tiny:org::{job_id}",
        run_token=ids.token_digest(token) if token else None,
    )


@pytest.fixture
def reporting(tmp_path: Path) -> Iterator[Any]:
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.upgrade()
    store = LocalObjectStore(tmp_path / "objects")
    with db.session() as s:
        s.add(a_job("ftjob-victim"))
        s.add(a_job("ftjob-done", status="succeeded", token=None))
        s.add(File(id="file-other", organization_id="org", project_id="proj", filename="o.jsonl", purpose="fine-tune",
                   bytes=5, object_key="files/file-other", created_at=now(), status="processed"))  # fmt: skip
    store.put_bytes("files/file-other", b"other")
    store.put_bytes(layout.results_key(layout.job_prefix("ftjob-victim")), b"step,train_loss\n1,0.5\n")
    server = ReportingServer(ReportingService(db, store))
    server.start()
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.TrainerReportingStub(channel)
    yield db, store, stub
    channel.close()
    server.stop(grace=0)
    db.engine.dispose()


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def run(job_id: str = "ftjob-victim", token: str = TOKEN) -> pb.RunRef:
    return pb.RunRef(job_id=job_id, run_token=token)


def test_no_status_oracle_without_the_token(reporting: Any) -> None:
    """A wrong token on a running job, any token on a finished job and an unknown job get one and the same answer
    (before, a finished job answered cancel_requested and an unknown one PERMISSION_DENIED)."""
    db, _, stub = reporting
    for ref in (run(token="guess"), run("ftjob-done", "guess"), run("ftjob-done", ""), run("ftjob-nope", TOKEN)):
        assert _code(lambda ref=ref: stub.Event(pb.EventRequest(run=ref, message="forged"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with db.session() as s:
        assert not s.scalars(select(JobEvent).where(JobEvent.message == "forged")).all()
    digest = ids.token_digest(TOKEN)
    assert token_matches(TOKEN, digest) and not token_matches(TOKEN, TOKEN) and not token_matches(TOKEN, None)
    assert not token_matches("", "")


def test_event_data_is_parsed_after_the_token_and_bounded(reporting: Any) -> None:
    db, _, stub = reporting
    # Without the token, data that would not even parse is never looked at: the answer is the token's.
    assert _code(lambda: stub.Event(pb.EventRequest(run=run(token="x"), message="m", data_json="{"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    deep = "[" * 200_000 + "]" * 200_000
    for data_json in ("{", deep, json.dumps([1, 2]), json.dumps({"k": "v" * MAX_EVENT_DATA})):
        stub.Event(pb.EventRequest(run=run(), message="odd data", data_json=data_json))
    stub.Event(pb.EventRequest(run=run(), message="good data", data_json=json.dumps({"k": 1})))
    with db.session() as s:
        events = {e.message: e for e in s.scalars(select(JobEvent).where(JobEvent.job_id == "ftjob-victim"))}
        odd = s.scalars(select(JobEvent).where(JobEvent.message == "odd data")).all()
        assert len(odd) == 4 and all(e.data is None for e in odd)
        assert events["good data"].data == {"k": 1}
    assert event_data(json.dumps({"a": [1]})) == {"a": [1]}


@pytest.mark.parametrize(
    "prefix", ["files/file-other", "jobs/ftjob-done/checkpoints/step-3", "jobs/ftjob-victim/checkpoints/step-3/../../x",
               "jobs/ftjob-victim/checkpoints/step-4"],
)  # fmt: skip
def test_a_checkpoint_outside_its_job_is_refused(reporting: Any, prefix: str) -> None:
    db, _, stub = reporting
    request = pb.CheckpointRequest(run=run(), step=3, object_prefix=prefix, metrics=pb.StepMetrics(step=3))
    assert _code(lambda: stub.Checkpoint(request)) == grpc.StatusCode.INVALID_ARGUMENT
    with db.session() as s:
        assert not s.scalars(select(FineTunedModel)).all()
    ok = pb.CheckpointRequest(
        run=run(), step=3, object_prefix="jobs/ftjob-victim/checkpoints/step-3", metrics=pb.StepMetrics(step=3)
    )
    stub.Checkpoint(ok)
    with db.session() as s:
        [model] = s.scalars(select(FineTunedModel)).all()
        assert model.object_prefix == "jobs/ftjob-victim/checkpoints/step-3"


@pytest.mark.parametrize(
    "forged",
    [
        {"results_key": "files/file-other"},
        {"results_key": "jobs/ftjob-done/results.csv"},
        {"model_prefix": "jobs/ftjob-done/model"},
        {"model_prefix": "files"},
        {"trained_tokens": -5},
    ],
)
def test_a_finished_report_naming_another_jobs_objects_is_refused(reporting: Any, forged: dict[str, Any]) -> None:
    """Regression: Finished(results_key="files/<another file>") made the job succeed and serve (and later delete)
    the other file's object as its results file."""
    db, store, stub = reporting
    good = {"model_prefix": "jobs/ftjob-victim/model", "results_key": "jobs/ftjob-victim/results.csv"}
    request = pb.FinishedRequest(run=run(), succeeded=True, **{**good, "trained_tokens": 10, **forged})
    assert _code(lambda: stub.Finished(request)) == grpc.StatusCode.INVALID_ARGUMENT
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-victim"))
        assert job is not None and job.status == "running" and job.run_token == ids.token_digest(TOKEN)
    stub.Finished(pb.FinishedRequest(run=run(), succeeded=True, trained_tokens=10, **good))
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-victim"))
        assert job is not None and job.status == "succeeded"
        [results] = s.scalars(select(File).where(File.id == job.result_files[0])).all()
        assert results.object_key == "jobs/ftjob-victim/results.csv"
    assert store.get_bytes("files/file-other") == b"other"


def test_the_results_file_is_the_servers_whatever_the_report_says(reporting: Any) -> None:
    """A report that leaves results_key empty still gets the job's own results file (the server decides the key)."""
    db, _, stub = reporting
    stub.Finished(pb.FinishedRequest(run=run(), succeeded=True, model_prefix="jobs/ftjob-victim/model/"))
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-victim"))
        assert job is not None and job.status == "succeeded" and job.result_files
        model = s.scalar(select(FineTunedModel).where(FineTunedModel.job_id == "ftjob-victim"))
        assert model is not None and model.object_prefix == "jobs/ftjob-victim/model"


def test_trained_tokens_are_checked_against_what_the_job_can_hold(reporting: Any) -> None:
    """Regression: a forged Finished(trained_tokens=123456789) was recorded as is. The bound is the server's: the
    plan's epochs and max_seq_length times the examples of the job's validated files."""
    from tunery.files import report_key
    from tunery.plan import TrainingPlan

    db, store, stub = reporting
    plan = TrainingPlan(n_epochs=2, batch_size=1, learning_rate=1e-3, max_seq_length=128)
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-victim"))
        assert job is not None
        job.set_plan(plan)
    store.put_bytes(report_key("file-train", "tiny"), json.dumps({"examples": 10}).encode())
    good = {"model_prefix": "jobs/ftjob-victim/model", "results_key": "jobs/ftjob-victim/results.csv"}
    forged = pb.FinishedRequest(run=run(), succeeded=True, trained_tokens=123_456_789, **good)
    assert _code(lambda: stub.Finished(forged)) == grpc.StatusCode.INVALID_ARGUMENT
    stub.Finished(pb.FinishedRequest(run=run(), succeeded=True, trained_tokens=2 * 10 * 128, **good))  # the bound
    with db.session() as s:
        job = s.scalar(select(Job).where(Job.id == "ftjob-victim"))
        assert job is not None and (job.status, job.trained_tokens) == ("succeeded", 2560)


def test_steps_reported_again_after_a_resume_are_one_event_each(reporting: Any) -> None:
    """A run resumed from an earlier checkpoint reports the steps after it again: the job keeps one metrics event per
    step (the first), then the new steps."""
    db, _, stub = reporting
    for step in (1, 2, 3, 2, 3, 4):
        metrics = pb.StepMetrics(
            step=step, total_steps=4, train_loss=1.0 / step, learning_rate=1e-3 / step, tokens_per_second=100.0 * step
        )
        stub.Metrics(pb.MetricsRequest(run=run(), metrics=metrics))
    with db.session() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == "ftjob-victim", JobEvent.type == "metrics")))
        assert [e.data["step"] for e in events] == [1, 2, 3, 4]
        assert [e.data["learning_rate"] for e in events] == [1e-3, 1e-3 / 2, 1e-3 / 3, 1e-3 / 4]  # the dashboard's
        assert [e.data["tokens_per_second"] for e in events] == [100.0, 200.0, 300.0, 400.0]


@pytest.mark.parametrize(
    "forged",
    [
        {"results_key": "files/file-other"},
        {"results_key": "jobs/exportjob-victim/export/model.tar.gz"},  # the other format's key
        {"results_key": "jobs/ftjob-victim/results.csv"},
        {"results_key": "jobs/exportjob-victim/export/model.gguf", "model_prefix": "jobs/exportjob-victim/model"},
    ],
)
def test_an_export_s_result_is_at_the_server_s_key_only(reporting: Any, forged: dict[str, Any]) -> None:
    """An export (docs/exports.md) reports its one result at the key its format gives (tunery/layout.py); any other
    key is refused, and the result becomes a fine-tune-results file of the export's project, named after the model."""
    db, store, stub = reporting
    with db.session() as s:
        job = a_job("exportjob-victim")
        job.kind, job.model, job.fine_tuned_model = "export", "ft:tiny:org::ftjob-done", None
        job.extensions = {"tunery": {"export": {"format": "gguf", "dtype": "float32", "gguf_type": None}}}
        s.add(job)
    key = layout.export_key(layout.job_prefix("exportjob-victim"), "gguf")
    store.put_bytes(key, b"GGUF...")
    forged_request = pb.FinishedRequest(run=run("exportjob-victim"), succeeded=True, **forged)
    assert _code(lambda: stub.Finished(forged_request)) == grpc.StatusCode.INVALID_ARGUMENT
    with db.session() as s:
        row = s.scalar(select(Job).where(Job.id == "exportjob-victim"))
        assert row is not None and row.status == "running" and row.result_files == []
    stub.Finished(pb.FinishedRequest(run=run("exportjob-victim"), succeeded=True, results_key=key))
    with db.session() as s:
        row = s.scalar(select(Job).where(Job.id == "exportjob-victim"))
        assert row is not None and row.status == "succeeded"
        [result] = s.scalars(select(File).where(File.id == row.result_files[0])).all()
        assert (result.object_key, result.purpose, result.bytes) == (key, "fine-tune-results", 7)
        assert (result.project_id, result.filename) == ("proj", "ft_tiny_org_ftjob-done.gguf")
        assert not s.scalars(select(FineTunedModel)).all()  # an export makes no model


def test_an_export_that_reports_success_without_its_result_fails(reporting: Any) -> None:
    db, _, stub = reporting
    with db.session() as s:
        job = a_job("exportjob-empty")
        job.kind, job.model, job.fine_tuned_model = "export", "ft:tiny:org::ftjob-done", None
        s.add(job)
    key = layout.export_key(layout.job_prefix("exportjob-empty"), "safetensors")  # the default format's; not written
    stub.Finished(pb.FinishedRequest(run=run("exportjob-empty"), succeeded=True, results_key=key))
    with db.session() as s:
        row = s.scalar(select(Job).where(Job.id == "exportjob-empty"))
        assert row is not None and row.status == "failed" and row.result_files == []
        assert row.error is not None and row.error["code"] == "export_error"
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == "exportjob-empty"))]
        assert "Export failed: The export ended without its result." in events
