"""Watching a real tiny training job over the public gRPC API: every event in order, exactly once, across a
reconnect with a cursor, and the stream ends when the job does."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests import fuzzing
from tests.conftest import TINY, chat_lines
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import fine_tuning_pb2_grpc

pytestmark = pytest.mark.integration  # trains through the trainer: make test, not test-fast


def test_watching_a_training_job_sees_every_event_once_across_a_reconnect(tiny_server_factory):  # type: ignore[no-untyped-def]
    srv = fuzzing.authorised(tiny_server_factory(api_keys=[fuzzing.API_KEY]))
    f = srv.client.files.create(file=("t.jsonl", chat_lines(16)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, hyperparameters={"n_epochs": 1, "batch_size": 4}
    )
    auth = (("authorization", f"Bearer {fuzzing.API_KEY}"),)
    seen: list[jpb.FineTuningJobEvent] = []
    paged: list[jpb.ListEventsResponse] = []
    with grpc.insecure_channel(srv.grpc_address) as channel:
        jobs = fine_tuning_pb2_grpc.FineTuningServiceStub(channel)
        # Beside it, a watch in pages follows the same job from start to end, without a reconnect.
        pages = jobs.WatchEventPages(jpb.WatchEventsRequest(job_id=job.id), metadata=auth, timeout=300)
        pager = threading.Thread(target=lambda: paged.extend(pages))
        pager.start()
        stream = jobs.WatchEvents(jpb.WatchEventsRequest(job_id=job.id), metadata=auth, timeout=300)
        for event in stream:
            seen.append(event)
            if len(seen) == 3:
                break
        stream.cancel()  # the client drops
        again = jobs.WatchEvents(jpb.WatchEventsRequest(job_id=job.id, after=seen[-1].id), metadata=auth, timeout=300)
        seen += list(again)  # ends by itself with the job
        pager.join(timeout=60)
        assert not pager.is_alive(), "the watch in pages ends with the job too"
    final = srv.client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "succeeded", srv.events(job.id)
    rest = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/events", params={"limit": 1000}).json()["data"]
    assert [e.id for e in seen] == [e["id"] for e in reversed(rest)]  # all of them, in order, once
    assert any(e.type == "metrics" for e in seen)  # live training steps came through the stream
    assert seen[-1].message == rest[0]["message"]
    assert [e.id for page in paged for e in page.data] == [e.id for e in seen]
    assert len(paged) > 1 and all(page.data and page.last_id == page.data[-1].id for page in paged)  # live, in parts
