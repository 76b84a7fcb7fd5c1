"""Webhooks of a job that trains (docs/webhooks.md): a real run on the tiny Llama sends its checkpoints' events
(Tunery's extension, asked for) and then OpenAI's ``fine_tuning.job.succeeded``, each signed so that the official SDK
verifies it, to a real receiver."""

from __future__ import annotations

import json

import pytest
from openai.types.webhooks import FineTuningJobSucceededWebhookEvent

from tests.conftest import TINY, chat_lines
from tests.webhook_receiver import receiver

CHECKPOINT = "tunery.fine_tuning.job.checkpoint.created"


@pytest.mark.integration
def test_a_trained_job_sends_its_checkpoints_then_its_success(tiny_server_factory):  # type: ignore[no-untyped-def]
    srv = tiny_server_factory(webhooks_allow_private=True)
    client = srv.client
    with receiver() as r:
        hook = client.webhooks.create(name="e2e", url=r.url, event_types=[CHECKPOINT, "fine_tuning.job.succeeded"])  # type: ignore[list-item]
        f = client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=TINY,
            training_file=f.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )
        job = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert job.status == "succeeded", (job.error, srv.events(job.id))
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        got = r.wait_for(len(checkpoints) + 1)
    secret = hook.signing_secret
    bodies = []
    for req in got:
        client.webhooks.verify_signature(req.body, req.headers, secret=secret)
        bodies.append(json.loads(req.body))
    *saved, done = bodies
    assert {b["type"] for b in saved} == {CHECKPOINT}
    assert sorted(b["data"]["id"] for b in saved) == sorted(c.id for c in checkpoints)
    assert {b["data"]["fine_tuning_job_id"] for b in saved} == {job.id}
    event = client.webhooks.unwrap(got[-1].body, got[-1].headers, secret=secret)
    assert isinstance(event, FineTuningJobSucceededWebhookEvent) and event.data.id == job.id
    assert done["created_at"] == job.finished_at
