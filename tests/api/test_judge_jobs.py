"""A reinforcement job whose grader is a ``score_model``, end to end: created through the official SDK, its judge
resolved by the scheduler into the trainer's JobSpec (the trainer loads it, never looking a model up by name), its
rewards reported in the job's metrics events; a judge gone by the time the job launches fails it, naming the field.
The judge at ``graders/run``: tests/api/test_graders_judge.py; the trainer's judge: tests/trainer/test_grpo_judge.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete

from tests.api.test_reinforcement import rft_lines
from tests.conftest import TINY, RunningServer
from tunery.db import FineTunedModel
from tunery.db.ops import now
from tunery.jobspec import JobSpec

MODEL = "ft:tiny-llama:personal:judge:AbCd1234"


def judge(model: str) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "input": [{"role": "user", "content": "Rate {{sample.output_text}} for {{item.keyword}}"}],
        "range": [0.25, 0.75],
        "sampling_params": {"max_completions_tokens": 3},
    }


def create(srv: RunningServer, grader: dict[str, Any]) -> Any:
    train = srv.client.files.create(file=("rft.jsonl", rft_lines(10)), purpose="fine-tune").id
    method = {
        "type": "reinforcement",
        "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": 1, "batch_size": 10}},
    }
    options = {"reinforcement": {"num_generations": 2, "max_completion_length": 4}, "training": {"n_checkpoints": 1}}
    return srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=train,
        method=method,  # type: ignore[arg-type]
        extra_body={"tunery": options},
    )


@pytest.mark.integration
def test_a_job_trains_on_the_rewards_of_its_judge(tiny_server_factory: Callable[..., RunningServer]) -> None:
    """The tiny random judge answers no number: each reward is the range's minimum, 0.25, which only the judge's
    grader gives; the spec names the judge's base model folder."""
    srv = tiny_server_factory()
    job = create(srv, judge(TINY))
    done = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=600)
    assert done.status == "succeeded", srv.events(job.id)
    spec = JobSpec.model_validate_json(srv.app.state.ctx.store.get_bytes(f"jobs/{job.id}/spec.json"))
    assert set(spec.judges) == {TINY}
    assert (spec.judges[TINY].base_model, spec.judges[TINY].adapter_prefix) == (TINY, None)
    events = srv.client.fine_tuning.jobs.list_events(job.id, limit=100).data
    rewards = [e.data["reward"] for e in events if e.type == "metrics" and e.data and "reward" in e.data]
    assert rewards and all(r == pytest.approx(0.25) for r in rewards), [e.data for e in events]


def test_a_judge_gone_before_the_launch_fails_the_job(tiny_server_factory: Callable[..., RunningServer]) -> None:
    """The project's fine-tuned judge was deleted while its job waited: the scheduler fails the job with the grader's
    ``model`` as the field at fault, and launches no trainer."""
    first = tiny_server_factory(max_concurrent_runs=0)  # nothing launches
    ctx = first.app.state.ctx
    with ctx.db.session() as s:
        s.add(
            FineTunedModel(
                id=MODEL,
                kind="fine_tuned",
                base_model=TINY,
                job_id="ftjob-judge",
                object_prefix="jobs/ftjob-judge/model/",
                owned_by="personal",
                organization_id=ctx.settings.organization_id,
                project_id=ctx.settings.project_id,
                created_at=now(),
            )
        )
    multi = {"type": "multi", "name": "m", "graders": {"j": judge(MODEL)}, "calculate_output": "j"}
    job = create(first, multi)
    first.wait_job(job.id, {"queued"}, timeout=60)
    with ctx.db.session() as s:
        s.execute(delete(FineTunedModel).where(FineTunedModel.id == MODEL))
    first.stop()
    second = tiny_server_factory(max_concurrent_runs=1)  # the same metadata store
    failed = second.wait_job(job.id, {"failed", "succeeded", "running"}, timeout=60)
    assert failed.status == "failed" and failed.error is not None
    param = "method.reinforcement.grader.graders.j.model"
    assert (failed.error.code, failed.error.param) == ("model_not_available", param) and MODEL in failed.error.message
    assert any(MODEL in m for m in second.events(job.id))
