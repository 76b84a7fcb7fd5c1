"""Reinforcement jobs through the API: OpenAI's request shape from the official SDK, the job object as OpenAI returns
it (``auto``, then resolved), Tunery's ``tunery.reinforcement``, the dry run's generation figures, the same object
over gRPC, and the refusals. Training itself is tests/trainer/test_grpo.py's and test_methods.py's."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from api.grpc.convert import to_message
from tests.api.test_evaluations import EV, wait_evaluation
from tests.conftest import TINY, RunningServer, chat_lines
from tests.schema import validate
from tunery.v1 import fine_tuning_pb2 as jpb
from tunery.v1 import fine_tuning_pb2_grpc

KEYWORD = {
    "type": "string_check",
    "name": "keyword",
    "input": "{{sample.output_text}}",
    "reference": "{{item.keyword}}",
    "operation": "ilike",
}


# An evaluation's report options: small, for CI time.
EVAL = {"samples": 2, "max_new_tokens": 4, "max_examples": 4}


def rft_lines(n: int) -> bytes:
    lines = [
        {"messages": [{"role": "user", "content": f"Question {i}: say a fruit."}], "keyword": "apple", "n": i}
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


def test_a_reinforcement_job_is_stored_resolved_and_returned_as_openai_says(
    tiny_server_factory: Callable[..., RunningServer],
) -> None:
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the job stays queued
    client = srv.client
    train = client.files.create(file=("rft.jsonl", rft_lines(20)), purpose="fine-tune").id
    client.files.wait_for_processing(train, poll_interval=0.1, max_wait_seconds=30)

    method = {
        "type": "reinforcement",
        "reinforcement": {"grader": KEYWORD, "hyperparameters": {"n_epochs": 2, "eval_samples": 2}},
    }
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=train, method=method, extra_body={"tunery": {"reinforcement": {"kl_coef": 0.05}}}
    )
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    assert raw["method"]["type"] == "reinforcement"
    section = raw["method"]["reinforcement"]
    assert section["grader"] == KEYWORD and section["response_format"] is None
    assert section["hyperparameters"] == {
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "n_epochs": 2,
        "eval_interval": "auto",
        "eval_samples": 2,
        "compute_multiplier": "auto",
        "reasoning_effort": "default",
    }
    assert raw["tunery"]["reinforcement"] == {
        "num_generations": "auto",
        "max_completion_length": 256,
        "kl_coef": 0.05,
        "temperature": 1.0,
    }

    job = srv.wait_job(job.id, {"queued"}, timeout=30)
    report = srv.http.get(f"/v1/files/{train}/validation", params={"model": TINY}).json()
    assert (report["format"], report["kind"], report["examples"]) == ("reinforcement", "reinforcement", 20)
    assert report["tokens"]["prompt_only"] and report["tokens"]["trained"] == 0 < report["tokens"]["total"]
    assert job.method.type == "reinforcement"
    hp = job.method.reinforcement.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 1, 1.0)
    assert (hp.eval_samples, hp.compute_multiplier, hp.reasoning_effort, hp.eval_interval) == (
        2,
        1.0,
        "default",
        "auto",
    )
    assert job.method.reinforcement.grader.type == "string_check"
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    # A CPU-only trainer samples 4 answers per prompt (compute_multiplier 1).
    assert raw["tunery"]["reinforcement"]["num_generations"] == 4

    # The same object over gRPC, field for field.
    with grpc.insecure_channel(srv.grpc_address) as channel:
        stub = fine_tuning_pb2_grpc.FineTuningServiceStub(channel)
        answer = stub.GetJob(jpb.GetJobRequest(job_id=job.id), timeout=30)
    assert answer == to_message(raw, type(answer))


def test_the_dry_run_counts_the_sampled_answers(tiny_server_factory: Callable[..., RunningServer]) -> None:
    srv = tiny_server_factory(max_concurrent_runs=0)
    train = srv.client.files.create(file=("rft.jsonl", rft_lines(20)), purpose="fine-tune").id
    srv.client.files.wait_for_processing(train, poll_interval=0.1, max_wait_seconds=30)

    def estimate(generations: int, length: int, grader: dict[str, Any] = KEYWORD) -> dict[str, Any]:
        body = {
            "model": TINY,
            "training_file": train,
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader}},
            "tunery": {"reinforcement": {"num_generations": generations, "max_completion_length": length}},
        }
        r = srv.http.post("/v1/fine_tuning/jobs/dry_run", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    small, more, longer = estimate(2, 16), estimate(8, 16), estimate(2, 64)
    assert more["tokens_per_epoch"] == 4 * small["tokens_per_epoch"]
    assert longer["tokens_per_epoch"] - small["tokens_per_epoch"] == 2 * 20 * (64 - 16)
    assert more["gpu_seconds"] > small["gpu_seconds"] and longer["gpu_seconds"] > small["gpu_seconds"]
    # The tokens the trainer will report: the prompts, once per answer.
    assert more["trained_tokens_per_epoch"] == 4 * small["trained_tokens_per_epoch"] > 0
    # A score_model grader's judge reads and scores every sampled answer: its time and memory are added.
    assert small["judge_params"] == 0 and small["judge_gpu_seconds"] == 0 and "judge" not in small["memory_gib"]
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": TINY,
        "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}}"}],
        "sampling_params": {"max_completions_tokens": 8},
    }
    judged = estimate(2, 16, judge)
    assert judged["judge_params"] == judged["params"] > 0  # the tiny model judges itself
    assert judged["judge_gpu_seconds"] > 0 and judged["memory_gib"]["judge"] > 0
    assert judged["gpu_seconds"] == pytest.approx(small["gpu_seconds"] + judged["judge_gpu_seconds"], abs=0.2)
    assert judged["memory_gib"]["total"] == pytest.approx(
        small["memory_gib"]["total"] + judged["memory_gib"]["judge"], abs=2e-3
    )

    # The scheduler's estimated_finish counts the judge as the dry run does: two jobs queued about together, one
    # judged by a long-winded judge, finish that judge's seconds apart.
    verbose = {**judge, "sampling_params": {"max_completions_tokens": 4096}}
    plain_dry, judged_dry = estimate(8, 64), estimate(8, 64, verbose)
    assert judged_dry["judge_gpu_seconds"] > 60, judged_dry  # well past the seconds between the two jobs' queueing

    def queued(grader: dict[str, Any]) -> Any:
        body = {
            "model": TINY,
            "training_file": train,
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader}},
            "tunery": {"reinforcement": {"num_generations": 8, "max_completion_length": 64}},
        }
        r = srv.http.post("/v1/fine_tuning/jobs", json=body)
        assert r.status_code == 200, r.text
        return srv.wait_job(r.json()["id"], {"queued"}, timeout=60)

    plain_job, judged_job = queued(KEYWORD), queued(verbose)
    apart = judged_job.estimated_finish - plain_job.estimated_finish
    assert apart == pytest.approx(judged_dry["gpu_seconds"] - plain_dry["gpu_seconds"], abs=10), (apart, judged_dry)


def test_files_of_another_kind_do_not_fit(tiny_server_factory: Callable[..., RunningServer]) -> None:
    from tests.conftest import chat_lines

    srv = tiny_server_factory(max_concurrent_runs=0)
    chat = srv.client.files.create(file=("c.jsonl", chat_lines(12)), purpose="fine-tune").id
    rft = srv.client.files.create(file=("r.jsonl", rft_lines(12)), purpose="fine-tune").id
    method = {"type": "reinforcement", "reinforcement": {"grader": KEYWORD}}
    bad = srv.client.fine_tuning.jobs.create(model=TINY, training_file=chat, method=method)
    bad = srv.wait_job(bad.id, {"failed"}, timeout=30)
    assert bad.error.code == "invalid_training_file" and "provided method=reinforcement" in bad.error.message
    sft = srv.client.fine_tuning.jobs.create(model=TINY, training_file=rft)
    sft = srv.wait_job(sft.id, {"failed"}, timeout=30)
    assert sft.error.code == "invalid_training_file" and "fine-tune-reinforcement" in sft.error.message


@pytest.mark.integration
def test_a_reinforcement_job_trains_end_to_end_and_its_model_answers(server: Any, upload: Any) -> None:
    """Through the embedded server: the scheduler validates the RFT file, launches the trainer with the grader in the
    plan, the steps report their rewards as metrics events, the job succeeds, and its model answers a chat."""
    train = upload(rft_lines(12)).id
    valid = upload(rft_lines(4)).id
    job = server.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=train,
        validation_file=valid,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": KEYWORD,
                "hyperparameters": {"n_epochs": 1, "batch_size": 4, "eval_interval": 1},
            },
        },
        extra_body={"tunery": {"reinforcement": {"num_generations": 2, "max_completion_length": 4}}},
    )
    done = server.wait_job(job.id, {"succeeded", "failed"}, timeout=300)
    assert done.status == "succeeded", (done.error, server.events(job.id))
    assert done.trained_tokens and done.trained_tokens > 0
    metrics = [e.data for e in server.client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics) == [1, 2, 3]  # 12 prompts, 4 a step
    assert all("reward" in m and "reward_std" in m and "completion_length" in m for m in metrics)
    assert all("valid_reward" in m for m in metrics)  # evaluated every step (eval_interval 1)
    hp = done.method.reinforcement.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.eval_interval) == (1, 4, 1)
    reply = server.client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert reply.model == done.fine_tuned_model and reply.usage.completion_tokens > 0

    # Evaluated on demand (docs/evals.md): a reinforcement file is graded by the job's grader, base against model, as
    # the job's own reports are; a chat file is scored by loss, as any model's.
    chat = upload(chat_lines(3)).id
    reports = {}
    for file_id in (valid, chat):
        ev = server.http.post(EV, json={"model": done.fine_tuned_model, "file": file_id, "eval": EVAL}).json()
        finished = wait_evaluation(server, ev["id"], {"succeeded", "failed"})
        assert finished["status"] == "succeeded", finished
        reports[file_id] = server.http.get(f"{EV}/{ev['id']}/report").json()
    graded = reports[valid]
    assert graded["evaluated_file"] == valid and graded["validation"] is None
    reward = graded["reward"]
    assert (
        reward["grader"].startswith("keyword")
        and reward["prompts"] == 4
        and reward["prompts_from"] == "validation_file"
    )
    for side in ("base", "model"):
        figures = reward["greedy"][side]
        assert figures["answers"] == 4 and 0.0 <= figures["mean"] <= 1.0, figures
    assert reward["greedy"]["change"] == pytest.approx(
        reward["greedy"]["model"]["mean"] - reward["greedy"]["base"]["mean"]
    )
    scored = reports[chat]
    assert scored["evaluated_file"] == chat and scored["reward"] is None
    assert scored["validation"]["model"]["loss"] > 0

    # Given a grader of its own (one that passes every answer), the same prompts are graded by it instead of the
    # job's, the answers sampled as in the job (its max_completion_length).
    every = {
        "type": "string_check",
        "name": "any",
        "input": "{{sample.output_text}}",
        "reference": "@@",
        "operation": "ne",
    }
    body = {"model": done.fine_tuned_model, "file": valid, "eval": EVAL, "grader": every}
    ev = server.http.post(EV, json=body).json()
    finished = wait_evaluation(server, ev["id"], {"succeeded", "failed"})
    assert finished["status"] == "succeeded" and finished["grader"] == every, finished
    reward = server.http.get(f"{EV}/{ev['id']}/report").json()["reward"]
    assert reward["grader"].startswith("any") and reward["max_completion_length"] == 4
    for side in ("base", "model"):
        assert (reward["greedy"][side]["answers"], reward["greedy"][side]["mean"]) == (4, 1.0)
