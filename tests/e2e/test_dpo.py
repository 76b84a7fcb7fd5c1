"""A DPO job end to end on the tiny Llama, through the OpenAI SDK: preference file, dpo method, metrics with DPO's
rewards, checkpoints, results file, the fine-tuned model answering. Responses are checked against OpenAI's schema."""

from __future__ import annotations

import base64
import csv
import io

import pytest

from tests.api.test_jobs import preference_lines
from tests.conftest import TINY
from tests.schema import validate

pytestmark = pytest.mark.integration  # trains through the trainer, or runs a cluster: make test, not test-fast

N_PAIRS, EPOCHS, BATCH = 12, 2, 4
STEPS = (N_PAIRS // BATCH) * EPOCHS


def test_dpo_job_end_to_end(tiny_server_factory, tmp_path):
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    client = srv.client
    f = client.files.create(file=("pairs.jsonl", preference_lines(N_PAIRS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=f.id,
        suffix="dpo",
        seed=3,
        # learning rate 1e-4 x 50: the tiny random model needs a push to move within 6 steps
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": "auto",
                    "n_epochs": EPOCHS,
                    "batch_size": BATCH,
                    "learning_rate_multiplier": 50,
                }
            },
        },
    )
    job = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.status == "succeeded", (job.error, srv.events(job.id))
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    assert raw["method"]["type"] == "dpo"
    assert raw["method"]["dpo"]["hyperparameters"] == {
        "n_epochs": EPOCHS,
        "batch_size": BATCH,
        "learning_rate_multiplier": 50.0,
        "beta": 0.1,
    }
    assert job.trained_tokens > 0 and job.fine_tuned_model.startswith(f"ft:{TINY}:personal:dpo:")

    # One metrics event per step, with DPO's reward figures; the margin grows over the run.
    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    validate(
        srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/events", params={"limit": 100}).json(),
        "ListFineTuningJobEventsResponse",
    )
    metrics = sorted((e for e in events.data if e.type == "metrics"), key=lambda e: e.data["step"])
    assert [e.data["step"] for e in metrics] == list(range(1, STEPS + 1))
    for e in metrics:
        assert {"train_loss", "rewards_accuracies", "rewards_margins", "rewards_chosen"} <= set(e.data)
    assert metrics[-1].data["rewards_margins"] > metrics[0].data["rewards_margins"]
    assert metrics[-1].data["train_loss"] < metrics[0].data["train_loss"]
    messages = [e.message for e in reversed(events.data)]
    assert messages[-1] == "The job has successfully completed"

    # Checkpoints per epoch, a results file with the reward columns, and the models answer.
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id)
    validate(srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints").json(), "ListFineTuningJobCheckpointsResponse")
    assert [c.step_number for c in ckpts.data] == [STEPS, STEPS // 2]
    rows = list(csv.reader(io.StringIO(base64.b64decode(client.files.content(job.result_files[0]).read()).decode())))
    assert rows[0][:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert "rewards_margins" in rows[0] and len(rows) == 1 + STEPS
    for model in (job.fine_tuned_model, ckpts.data[-1].fine_tuned_model_checkpoint):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Question number 3?"}], temperature=0, max_tokens=4
        )
        assert r.model == model and r.usage.completion_tokens <= 4
