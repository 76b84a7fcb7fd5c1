"""One job end to end on the tiny Llama, through the OpenAI SDK: train, events, checkpoints, results, models,
chat (plain and streaming), delete, restart; and cancel of a running job. Responses are checked against
OpenAI's schema."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import TINY, chat_lines
from tests.schema import validate

N_EXAMPLES, EPOCHS, BATCH = 12, 2, 4
STEPS = (N_EXAMPLES // BATCH) * EPOCHS


def _trainer_pids(job_id: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"trainer" in cmd and job_id.encode() in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def trained(tiny_server_factory, tmp_path):
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    f = srv.client.files.create(file=("train.jsonl", chat_lines(N_EXAMPLES)), purpose="fine-tune")
    v = srv.client.files.create(file=("valid.jsonl", chat_lines(4)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=f.id,
        validation_file=v.id,
        suffix="E2E Test",
        seed=7,
        metadata={"purpose": "e2e"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": EPOCHS, "batch_size": BATCH}}},
    )
    job = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.status == "succeeded", (job.error, srv.events(job.id))
    return srv, job


@pytest.mark.integration
def test_job_end_to_end(trained, tiny_server_factory, tmp_path):
    srv, job = trained
    client = srv.client
    raw_job = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw_job, "FineTuningJob")
    assert re.fullmatch(rf"ft:{TINY}:personal:e2e-test:{job.id[6:14]}", job.fine_tuned_model)
    assert raw_job["error"] is None and job.finished_at >= job.created_at
    assert job.trained_tokens > 0 and job.hyperparameters.n_epochs == EPOCHS and job.hyperparameters.batch_size == BATCH
    assert job.estimated_finish is None

    # Events: OpenAI's messages, newest first, one metrics event per step.
    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    validate(
        srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/events", params={"limit": 100}).json(),
        "ListFineTuningJobEventsResponse",
    )
    messages = [e.message for e in reversed(events.data)]
    for expected in (
        f"Created fine-tuning job: {job.id}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
        f"New fine-tuned model created: {job.fine_tuned_model}",
        "The job has successfully completed",
    ):
        assert expected in messages
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events.data if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == list(range(1, STEPS + 1))
    assert all(e.data["total_steps"] == STEPS and e.data["train_loss"] > 0 for e in metrics)
    assert all(e.data["peak_memory_gib"] > 0.1 for e in metrics)  # the trainer's peak memory, with each step
    assert any("valid_loss" in e.data for e in metrics)
    assert re.fullmatch(r"Step \d+/\d+: training loss=\d+\.\d\d.*", metrics[0].message)
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert page.has_more and len(page.data) == 3
    nxt = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert nxt.data[0].created_at <= page.data[-1].created_at and nxt.data[0].id not in {e.id for e in page.data}

    # Checkpoints: one per epoch, newest first.
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id)
    validate(srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints").json(), "ListFineTuningJobCheckpointsResponse")
    steps = [c.step_number for c in ckpts.data]
    assert steps == [STEPS, STEPS // 2]
    for c in ckpts.data:
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.fine_tuning_job_id == job.id and c.metrics.step == c.step_number

    # Results CSV as a fine-tune-results file, then the final model's eval report (docs/evals.md).
    assert len(job.result_files) == 2
    report_file = client.files.retrieve(job.result_files[1])
    assert report_file.purpose == "fine-tune-results" and report_file.filename == "eval_report.json"
    rf = client.files.retrieve(job.result_files[0])
    assert rf.purpose == "fine-tune-results"
    # Served base64-encoded as OpenAI serves it: code written for OpenAI decodes it.
    rows = list(csv.reader(io.StringIO(base64.b64decode(client.files.content(rf.id).read()).decode())))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, STEPS + 1))

    # Models: base, fine-tuned and checkpoint models.
    listed = {m.id for m in client.models.list().data}
    validate(srv.http.get("/v1/models").json(), "ListModelsResponse")
    ckpt_model = ckpts.data[-1].fine_tuned_model_checkpoint
    assert {TINY, job.fine_tuned_model, ckpt_model} <= listed
    m = client.models.retrieve(job.fine_tuned_model)
    assert m.id == job.fine_tuned_model and m.owned_by == "org-default"
    validate(srv.http.get(f"/v1/models/{job.fine_tuned_model}").json(), "Model")

    # Chat with each model, plain and streaming.
    outputs = {}
    for model in (TINY, job.fine_tuned_model, ckpt_model):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Question number 3?"}],
            "temperature": 0,
            "max_tokens": 8,
        }
        raw = srv.http.post("/v1/chat/completions", json=body).json()
        validate(raw, "CreateChatCompletionResponse")
        r = client.chat.completions.create(**body)
        assert r.model == model and r.choices[0].finish_reason in ("stop", "length")
        assert (
            r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        )
        assert r.choices[0].message.content == raw["choices"][0]["message"]["content"]  # greedy is deterministic
        outputs[model] = r.choices[0].message.content
        chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == outputs[model]
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and chunks[-1].choices == []
        assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    # (That an adapter changes the answers is shown by test_serving_engine and, on the real model, test_demo_model.)
    with srv.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        validate(json.loads(ln.removeprefix("data: ")), "CreateChatCompletionStreamResponse")

    # Delete the fine-tuned model and the newest checkpoint's: gone from the lists and from serving.
    raw_deleted = srv.http.delete(f"/v1/models/{ckpts.data[0].fine_tuned_model_checkpoint}").json()
    validate(raw_deleted, "DeleteModelResponse")
    assert raw_deleted["deleted"] is True
    deleted = client.models.delete(job.fine_tuned_model)
    assert deleted.deleted
    assert job.fine_tuned_model not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])

    # Restart on the same state: every file, job, event and checkpoint is still there.
    srv.stop()
    again = tiny_server_factory(data_dir=tmp_path / "state")
    assert again.client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    assert [e.id for e in again.client.fine_tuning.jobs.list_events(job.id, limit=100).data] == [
        e.id for e in events.data
    ]
    kept = again.client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.id for c in kept] == [c.id for c in ckpts.data[1:]]  # the deleted checkpoint model is not listed
    assert {f.id for f in again.client.files.list()} >= {rf.id, job.training_file}
    r = again.client.chat.completions.create(
        model=ckpt_model, messages=[{"role": "user", "content": "Question number 3?"}], temperature=0, max_tokens=8
    )
    assert r.choices[0].message.content == outputs[ckpt_model]


def test_chat_request_errors(server):
    http = server.http
    good = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    for body, status, param in (
        ({**good, "model": "nope"}, 404, "model"),
        ({**good, "messages": []}, 400, "messages"),
        ({**good, "temperature": 3}, 400, "temperature"),
        ({**good, "n": 2}, 400, "n"),
        ({"messages": good["messages"]}, 400, "model"),
        ({**good, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({**good, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ):
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == status, (body, r.text)
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param, (body, r.json())
        assert r.headers["x-request-id"]


@pytest.mark.integration
def test_cancel_running_job_stops_trainer(tiny_server_factory):
    srv = tiny_server_factory()
    f = srv.client.files.create(file=("train.jsonl", chat_lines(40)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=f.id, hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in srv.client.fine_tuning.jobs.list_events(job.id, limit=5).data):
        assert time.monotonic() < deadline, srv.events(job.id)
        time.sleep(0.3)
    assert _trainer_pids(job.id)
    cancelled = srv.client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    t0 = time.monotonic()
    while _trainer_pids(job.id):
        assert time.monotonic() - t0 < 10, "trainer still running 10 s after cancel"
        time.sleep(0.2)
    time.sleep(1)
    final = srv.client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None
