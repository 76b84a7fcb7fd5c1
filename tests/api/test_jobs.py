"""/v1/fine_tuning/jobs requests, validation and errors through the OpenAI SDK (no training needed here)."""

from __future__ import annotations

import json
import time

import openai
import pytest
from sqlalchemy import select

from scheduler.reporting import servable_model
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, chat_lines
from tests.schema import validate
from tunery import ids
from tunery.db import Checkpoint, Job

# OpenAI's keyword grader of a reinforcement job: the sampled answer contains the line's ``keyword``.
KEYWORD = {
    "type": "string_check",
    "name": "keyword",
    "input": "{{sample.output_text}}",
    "reference": "{{item.keyword}}",
    "operation": "ilike",
}


def test_job_with_too_few_examples_fails_invalid_n_examples(server, upload):
    f = upload(chat_lines(3))
    job = server.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    assert job.status == "validating_files"
    assert job.error is None and job.fine_tuned_model is None and job.result_files == []
    validate(server.http.get(f"/v1/fine_tuning/jobs/{job.id}").json(), "FineTuningJob")
    job = server.wait_job(job.id, {"failed"}, timeout=30)
    assert job.error.code == "invalid_n_examples"
    assert job.error.param == "training_file"
    assert job.error.message == "Training file has 3 example(s), but must have at least 10 examples"
    assert job.finished_at is not None
    validate(server.http.get(f"/v1/fine_tuning/jobs/{job.id}").json(), "FineTuningJob")
    messages = server.events(job.id)
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[1] == f"Validating training file: {f.id}"
    assert "Training file has 3 example(s)" in messages[-1]


@pytest.mark.parametrize(
    ("bad_line", "line_no", "needle"),
    [
        (b"{not json", 4, "invalid JSON"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 7, "unknown role 'wizard'"),
        (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}).encode(), 2, "no assistant"),
        (json.dumps({"prompt": "x"}).encode(), 5, "missing 'messages'"),
    ],
)
def test_malformed_line_fails_in_validation_with_line_number(server, upload, bad_line, line_no, needle):
    lines = chat_lines(12).splitlines()
    lines.insert(line_no - 1, bad_line)
    f = upload(b"\n".join(lines) + b"\n")
    # Created before the upload's validation ends, the job fails in its own; after, creation itself is refused.
    r = server.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": f.id})
    if r.status_code == 200:
        job_id = r.json()["id"]
        error = server.wait_job(job_id, {"failed"}, timeout=30).error.model_dump()
        # It failed in validation: it was never queued or started.
        assert not any("queued" in m or "started" in m for m in server.events(job_id))
    else:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
    assert error["code"] == "invalid_training_file"
    assert error["param"] == "training_file"
    assert f"line {line_no}" in error["message"]
    assert needle in error["message"]


def test_create_errors_are_400_with_param(server, upload):
    good = upload(chat_lines(12)).id
    results = upload(b"a,b\n1,2\n", name="r.txt", purpose="assistants").id
    cases = [
        ({"model": "no-such-model", "training_file": good}, "model"),
        ({"model": TINY, "training_file": "file-missing"}, "training_file"),
        ({"model": TINY, "training_file": results}, "training_file"),
        ({"model": TINY, "training_file": good, "validation_file": "file-missing"}, "validation_file"),
        ({"model": TINY, "training_file": good, "suffix": "x" * 65}, "suffix"),
        ({"model": TINY, "training_file": good, "seed": -1}, "seed"),
        ({"model": TINY, "training_file": good, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {"model": TINY, "training_file": good, "hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"model": TINY, "training_file": good, "method": {"type": "reinforcement"}}, "method.reinforcement"),
        ({"model": TINY, "training_file": good, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"training_file": good}, "model"),
        ({"model": TINY}, "training_file"),
    ]
    for body, param in cases:
        r = server.http.post("/v1/fine_tuning/jobs", json=body)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        validate(r.json(), "ErrorResponse")
        assert err["param"] == param, (body, err)
        assert err["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        server.client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good)
    assert e.value.code == "model_not_available"
    r = server.http.post("/v1/fine_tuning/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert server.client.fine_tuning.jobs.list().data == []
    # OpenAI bounds learning_rate_multiplier below only (> 0): a large one is the user's call.
    big = {"model": TINY, "training_file": good, "hyperparameters": {"learning_rate_multiplier": 500}}
    assert server.http.post("/v1/fine_tuning/jobs", json=big).status_code == 200


def test_a_multiplier_whose_learning_rate_rounds_to_zero_is_a_400(server, upload):
    """Found by tests/api/test_fuzz.py: 5e-324 is > 0, but times any base rate it is 0.0; the dry run answered 500
    and the job failed its validation with a server_error."""
    good = upload(chat_lines(12)).id
    server.client.files.wait_for_processing(good, poll_interval=0.1, max_wait_seconds=30)
    tiny = {"learning_rate_multiplier": 5e-324}
    for hp, param in (
        ({"hyperparameters": tiny}, "hyperparameters.learning_rate_multiplier"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": tiny}}},
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": tiny}}},
            "method.dpo.hyperparameters.learning_rate_multiplier",
        ),
    ):
        for path in ("/v1/fine_tuning/jobs/dry_run", "/v1/fine_tuning/jobs"):
            r = server.http.post(path, json={"model": TINY, "training_file": good, **hp})
            assert r.status_code == 400, (path, r.text)
            validate(r.json(), "ErrorResponse")
            assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == "invalid_hyperparameters"
            assert "rounds to 0" in r.json()["error"]["message"]
    assert server.client.fine_tuning.jobs.list().data == []
    # A small multiplier whose rate is still a number trains with it.
    small = {"model": TINY, "training_file": good, "hyperparameters": {"learning_rate_multiplier": 1e-300}}
    assert server.http.post("/v1/fine_tuning/jobs/dry_run", json=small).status_code == 200


def test_not_found_and_unknown_routes(server):
    for path in (
        "/v1/fine_tuning/jobs/ftjob-nope",
        "/v1/fine_tuning/jobs/ftjob-nope/events",
        "/v1/fine_tuning/jobs/ftjob-nope/checkpoints",
        "/v1/nothing/here",
        "/v1/models/ft:nope:x::y",
    ):
        r = server.http.get(path)
        assert r.status_code == 404, path
        validate(r.json(), "ErrorResponse")
        assert r.headers["x-request-id"]
    r = server.http.post("/v1/fine_tuning/jobs/ftjob-nope/cancel")
    assert r.status_code == 404
    with pytest.raises(openai.NotFoundError) as e:
        server.client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert e.value.request_id


def test_list_jobs_metadata_filter_and_pagination(server, upload):
    f = upload(chat_lines(3)).id  # the jobs fail in validation: no training needed
    created = []
    for i in range(5):
        md = {"team": "a" if i % 2 == 0 else "b", "i": str(i)}
        created.append(server.client.fine_tuning.jobs.create(model=TINY, training_file=f, metadata=md).id)
    page = server.client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [created[4], created[3]] and page.has_more
    validate(server.http.get("/v1/fine_tuning/jobs", params={"limit": 2}).json(), "ListPaginatedFineTuningJobsResponse")
    assert [j.id for j in server.client.fine_tuning.jobs.list(limit=2)] == list(reversed(created))
    team_a = server.client.fine_tuning.jobs.list(metadata={"team": "a"})
    assert [j.id for j in team_a.data] == [created[4], created[2], created[0]]
    assert [j.id for j in server.client.fine_tuning.jobs.list(metadata={"team": "b", "i": "3"}).data] == [created[3]]
    assert server.client.fine_tuning.jobs.list(metadata={"team": "z"}).data == []
    raw = server.http.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert (raw["first_id"], raw["last_id"]) == (created[4], created[3])
    # Past OpenAI's documented pages: served, not refused; an unknown cursor ends the list.
    assert len(server.http.get("/v1/fine_tuning/jobs", params={"limit": 5000}).json()["data"]) == 5
    for cursor in ("ftjob-neverexisted", f):  # a file id is no job of this list
        empty = server.http.get("/v1/fine_tuning/jobs", params={"after": cursor})
        assert empty.status_code == 200 and empty.json()["data"] == [] and not empty.json()["has_more"]
    events = server.http.get(f"/v1/fine_tuning/jobs/{created[0]}/events", params={"limit": 5000}).json()
    assert events["data"] and (events["first_id"], events["last_id"]) == (
        events["data"][0]["id"],
        events["data"][-1]["id"],
    )
    assert all(e["id"].startswith("ft-event-") for e in events["data"])
    other_jobs_event = server.http.get(f"/v1/fine_tuning/jobs/{created[1]}/events").json()["data"][0]["id"]
    assert (
        server.http.get(f"/v1/fine_tuning/jobs/{created[0]}/events", params={"after": other_jobs_event}).json()["data"]
        == []
    )
    job = server.client.fine_tuning.jobs.retrieve(created[0])
    assert job.metadata == {"team": "a", "i": "0"}


def test_cancel_before_training_and_twice(server, upload):
    f = upload(chat_lines(12)).id
    # No worker picks it up while max_concurrent_runs=0 ... so use a running server: cancel right away.
    job = server.client.fine_tuning.jobs.create(model=TINY, training_file=f, suffix="cx")
    cancelled = server.client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    validate(server.http.get(f"/v1/fine_tuning/jobs/{job.id}").json(), "FineTuningJob")
    with pytest.raises(openai.BadRequestError) as e:
        server.client.fine_tuning.jobs.cancel(job.id)
    assert e.value.code == "job_not_cancellable"
    assert server.client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert "Fine-tuning job cancelled" in server.events(job.id)


def test_hyperparameters_resolved_and_method_preferred(tiny_server_factory):
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the job stays queued
    f = srv.client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune").id
    job = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=f,
        hyperparameters={"n_epochs": 9},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}},
    )
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    job = srv.wait_job(job.id, {"queued"}, timeout=30)
    hp = job.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 1, 1.0)
    assert job.method.supervised.hyperparameters.n_epochs == 2
    auto = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f)
    auto = srv.wait_job(auto.id, {"queued"}, timeout=30)
    assert auto.hyperparameters.n_epochs == 3  # 40 examples x 3 epochs >= 100
    assert auto.seed is not None and auto.fine_tuned_model is None
    assert "Files validated, moving job to queued state" in srv.events(auto.id)
    validate(srv.http.get(f"/v1/fine_tuning/jobs/{auto.id}").json(), "FineTuningJob")


def test_tunery_data_options_stored_returned_and_validated(tiny_server_factory):
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the job stays queued
    train = srv.client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune").id
    general = srv.client.files.create(file=("g.jsonl", chat_lines(30, answer="A: {q}")), purpose="fine-tune").id
    options = {"data": {"drop_duplicates": True, "long_examples": "drop", "mix": {"file": general, "fraction": 0.2}}}
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=train, extra_body={"tunery": options})
    assert job.model_extra["tunery"]["data"] == options["data"]
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    assert raw["tunery"]["data"] == options["data"]
    queued = srv.wait_job(job.id, {"queued"}, timeout=30)
    assert queued.model_extra["tunery"]["data"] == options["data"]
    events = srv.events(job.id)
    assert any(e.startswith(f"Mix file {general}: 30 example(s) in the chat format; ") for e in events)
    # 40 training examples + round(40 * 0.2 / 0.8) = 10 mixed in.
    validated = srv.client.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert validated.data["train_examples"] == 50

    # Defaults filled in; jobs without the field carry no data options (only the training options, which every
    # job has: tests/tunery/test_plan.py).
    only_dups = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=train, extra_body={"tunery": {"data": {"drop_duplicates": True}}}
    )
    assert only_dups.model_extra["tunery"]["data"] == {
        "drop_duplicates": True,
        "long_examples": "truncate",
        "mix": None,
    }
    assert srv.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": train, "tunery": {}}).json()[
        "tunery"
    ]["data"] == {"drop_duplicates": False, "long_examples": "truncate", "mix": None}
    plain = srv.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": train}).json()
    assert "tunery" not in plain  # a job that did not ask for extensions has OpenAI's fields only
    validate(plain, "FineTuningJob")
    listed = srv.http.get("/v1/fine_tuning/jobs").json()
    validate(listed, "ListPaginatedFineTuningJobsResponse")

    results = srv.client.files.create(file=("r.txt", b"a,b\n"), purpose="assistants").id
    cases = [
        ({"data": {"mix": {"file": general, "fraction": 0.6}}}, "tunery.data.mix.fraction"),
        ({"data": {"mix": {"file": general, "fraction": 0}}}, "tunery.data.mix.fraction"),
        ({"data": {"mix": {"file": general}}}, "tunery.data.mix.fraction"),
        ({"data": {"mix": {"fraction": 0.1}}}, "tunery.data.mix.file"),
        ({"data": {"mix": {"file": "file-missing", "fraction": 0.1}}}, "tunery.data.mix.file"),
        ({"data": {"mix": {"file": results, "fraction": 0.1}}}, "tunery.data.mix.file"),
        ({"data": {"mix": {"file": general, "fraction": 0.1, "seed": 3}}}, "tunery.data.mix.seed"),
        ({"data": {"long_examples": "shorten"}}, "tunery.data.long_examples"),
        ({"data": {"drop_duplicates": "maybe"}}, "tunery.data.drop_duplicates"),
        ({"data": {"dedupe": True}}, "tunery.data.dedupe"),
        ({"other": {}}, "tunery.other"),
        ("yes", "tunery"),
    ]
    for ext, param in cases:
        r = srv.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": train, "tunery": ext})
        assert r.status_code == 400, (ext, r.text)
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param, (ext, r.json())


def test_mix_file_in_preference_format_fails_validation(server, upload):
    train = upload(chat_lines(12)).id
    pref = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello."}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
    mix = upload(("\n".join(json.dumps(pref) for _ in range(3)) + "\n").encode(), name="p.jsonl").id
    job = server.client.fine_tuning.jobs.create(
        model=TINY, training_file=train, extra_body={"tunery": {"data": {"mix": {"file": mix, "fraction": 0.1}}}}
    )
    job = server.wait_job(job.id, {"failed"}, timeout=30)
    assert job.error.param == "tunery.data.mix.file"
    assert job.error.code == "invalid_mix_file"
    assert mix in job.error.message


# ---- method: dpo (docs/methods.md) ------------------------------------------------------------------------------
def preference_lines(n: int) -> bytes:
    lines = [
        {
            "input": {"messages": [{"role": "user", "content": f"Question number {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"BEEP BOOP: {i} END OF LINE."}],
            "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
        }
        for i in range(n)
    ]
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def test_dpo_method_validation_errors_are_400_with_param(server, upload):
    pairs = upload(preference_lines(12)).id
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {}}}
    cases = [
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta", None),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}},
            "method.dpo.hyperparameters.beta",
            None,
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}},
            "method.dpo.hyperparameters.beta",
            None,
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 51}}}},
            "method.dpo.hyperparameters.n_epochs",
            None,
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"gamma": 1}}}},
            "method.dpo.hyperparameters.gamma",
            None,
        ),
        ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised", "invalid_method"),
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo", "invalid_method"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement", "invalid_method"),
        (
            {"method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}}},
            "method.reinforcement.grader.name",
            "invalid_grader",
        ),
        (
            {"method": {"type": "reinforcement", "reinforcement": {"grader": KEYWORD, "response_format": {}}}},
            "method.reinforcement.response_format",
            "unsupported_method",
        ),
        (
            {"method": {"type": "reinforcement", "reinforcement": {"grader": {**KEYWORD, "reference": "{{x.y}}"}}}},
            "method.reinforcement.grader.reference",
            "invalid_template",
        ),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {"grader": {"type": "python", "name": "p", "source": "x"}},
                }
            },
            "method.reinforcement.grader.source",
            "invalid_grader",
        ),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {"grader": KEYWORD, "hyperparameters": {"eval_samples": 0}},
                }
            },
            "method.reinforcement.hyperparameters.eval_samples",
            None,
        ),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {"grader": KEYWORD, "hyperparameters": {"compute_multiplier": 11}},
                }
            },
            "method.reinforcement.hyperparameters.compute_multiplier",
            None,
        ),
        (
            {
                "method": {"type": "reinforcement", "reinforcement": {"grader": KEYWORD}},
                "tunery": {"reinforcement": {"num_generations": 1}},
            },
            "tunery.reinforcement.num_generations",
            None,
        ),
        ({"tunery": {"reinforcement": {"kl_coef": 0.1}}}, "tunery.reinforcement", "invalid_method"),
        ({"method": {"type": "ppo"}}, "method.type", None),
        ({"tunery": {"method": {"trainer": "kto"}}}, "tunery.method.trainer", "invalid_method"),
        ({"method": dpo, "tunery": {"method": {"trainer": "simpo"}}}, "tunery.method.trainer", None),
        (
            {"method": dpo, "tunery": {"data": {"mix": {"file": pairs, "fraction": 0.1}}}},
            "tunery.data.mix",
            "invalid_method",
        ),
    ]
    for extra, param, code in cases:
        r = server.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": pairs, **extra})
        assert r.status_code == 400, (extra, r.text)
        validate(r.json(), "ErrorResponse")
        err = r.json()["error"]
        assert err["param"] == param, (extra, err)
        assert code is None or err["code"] == code, (extra, err)
    assert server.client.fine_tuning.jobs.list().data == []


def test_dpo_job_stored_resolved_and_returned_as_openai_says(tiny_server_factory):
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the jobs stay queued
    pairs = srv.client.files.create(file=("p.jsonl", preference_lines(40)), purpose="fine-tune").id
    job = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=pairs,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.25}}},
    )
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    assert raw["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 2, "beta": 0.25}
        },
    }
    assert "tunery" not in raw  # the default trainer (dpo) is not shown to a job that did not ask for extensions
    job = srv.wait_job(job.id, {"queued"}, timeout=30)
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    validate(raw, "FineTuningJob")
    assert job.method.type == "dpo" and job.method.supervised is None
    hp = job.method.dpo.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier, hp.beta) == (2, 1, 1.0, 0.25)
    assert raw["hyperparameters"] == {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}

    # beta "auto" resolves to 0.1; the extension picks the TRL trainer and is returned under "tunery".
    kto = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=pairs,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}},
        extra_body={"tunery": {"method": {"trainer": "kto"}}},
    )
    assert kto.model_extra["tunery"]["method"] == {"trainer": "kto"}
    kto = srv.wait_job(kto.id, {"queued"}, timeout=30)
    assert kto.method.type == "dpo" and kto.method.dpo.hyperparameters.beta == 0.1
    validate(srv.http.get(f"/v1/fine_tuning/jobs/{kto.id}").json(), "FineTuningJob")

    # A chat file does not fit a dpo job, nor a preference file a supervised one (OpenAI's error).
    chat = srv.client.files.create(file=("c.jsonl", chat_lines(12)), purpose="fine-tune").id
    bad = srv.client.fine_tuning.jobs.create(model=TINY, training_file=chat, method={"type": "dpo"})
    bad = srv.wait_job(bad.id, {"failed"}, timeout=30)
    assert bad.error.code == "invalid_training_file" and "provided method=dpo" in bad.error.message
    sft = srv.client.fine_tuning.jobs.create(model=TINY, training_file=pairs)
    sft = srv.wait_job(sft.id, {"failed"}, timeout=30)
    assert sft.error.code == "invalid_training_file"


def test_tunery_object_only_on_jobs_that_asked_for_it(tiny_server_factory):
    """OpenAI's typed clients see exactly OpenAI's fields on a plain job; ``tunery`` (resolved options) comes back
    only to a job created with ``tunery`` in its body (``extra_body``). What is stored is the same either way."""
    srv = tiny_server_factory(max_concurrent_runs=0)  # nothing launches: the jobs stay queued
    train = srv.client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune").id
    plain = srv.client.fine_tuning.jobs.create(model=TINY, training_file=train)
    asked = srv.client.fine_tuning.jobs.create(model=TINY, training_file=train, extra_body={"tunery": {}})
    assert "tunery" not in (plain.model_extra or {})
    assert set(asked.model_extra["tunery"]) == {"data", "training", "scheduling"}
    for job_id in (plain.id, asked.id):
        srv.wait_job(job_id, {"queued"}, timeout=30)  # the scheduler resolves (rewrites) the stored options
    raw = srv.http.get(f"/v1/fine_tuning/jobs/{plain.id}").json()
    assert "tunery" not in raw
    validate(raw, "FineTuningJob")
    resolved = srv.http.get(f"/v1/fine_tuning/jobs/{asked.id}").json()["tunery"]
    assert resolved["training"]["max_seq_length"] == 1024 and resolved["training"]["precision"] == "fp32"
    listed = {j["id"]: j for j in srv.http.get("/v1/fine_tuning/jobs").json()["data"]}
    assert "tunery" not in listed[plain.id] and "tunery" in listed[asked.id]
    cancelled = srv.http.post(f"/v1/fine_tuning/jobs/{plain.id}/cancel").json()
    assert cancelled["status"] == "cancelled" and "tunery" not in cancelled
    with srv.app.state.ctx.db.session() as s:  # stored as before: the scheduler reads the job's training options
        stored = s.scalar(select(Job.extensions).where(Job.id == plain.id))
    assert set(stored["tunery"]) == {"training"} and stored["tunery"]["training"]["max_seq_length"] == 1024


def test_deleted_checkpoint_model_is_not_listed(tiny_server_factory):
    """DELETE /v1/models/{ft:...:ckpt-step-N} removes the checkpoint from its job's list; the model is gone for
    retrieve, chat and fine-tuning. Checkpoints are recorded here as the reporting service records them (a row and
    its servable model in one transaction), without training."""
    srv = tiny_server_factory(max_concurrent_runs=0)
    train = srv.client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune").id
    job_id = srv.wait_job(srv.client.fine_tuning.jobs.create(model=TINY, training_file=train).id, {"queued"}, 30).id
    with srv.app.state.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        assert job is not None and job.fine_tuned_model
        for step, loss in ((1, 2.0), (2, 1.0), (3, 1.5)):
            name = ids.checkpoint_model_name(job.fine_tuned_model, step)
            prefix = f"jobs/{job_id}/checkpoints/step-{step}"
            s.add(
                Checkpoint(
                    id=ids.checkpoint_id(),
                    job_id=job_id,
                    created_at=int(time.time()),
                    step_number=step,
                    metrics={"step": step, "train_loss": loss, "valid_loss": loss},
                    fine_tuned_model_checkpoint=name,
                    object_prefix=prefix,
                )
            )
            s.add(servable_model(job, name, "checkpoint", prefix))

    def listed(**kw) -> list[tuple[int, bool]]:
        raw = srv.http.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params=kw).json()
        validate(raw, "ListFineTuningJobCheckpointsResponse")
        return [(c["step_number"], c["tunery"]["best"]) for c in raw["data"]]

    before = srv.client.fine_tuning.jobs.checkpoints.list(job_id).data
    assert [c.step_number for c in before] == [3, 2, 1] and listed() == [(3, False), (2, True), (1, False)]
    gone = before[1].fine_tuned_model_checkpoint
    deleted = srv.client.models.delete(gone)
    assert deleted.deleted and deleted.id == gone

    assert [c.step_number for c in srv.client.fine_tuning.jobs.checkpoints.list(job_id)] == [3, 1]
    assert listed() == [(3, False), (1, False)]  # the run's best was step 2: no other one is marked instead
    assert listed(after=before[1].id) == [(1, False)]  # a cursor at the deleted one still pages on
    assert gone not in [m.id for m in srv.client.models.list()]
    for r in (
        srv.http.get(f"/v1/models/{gone}"),
        srv.http.delete(f"/v1/models/{gone}"),
        srv.http.post("/v1/chat/completions", json={"model": gone, "messages": [{"role": "user", "content": "Hi"}]}),
    ):
        assert r.status_code == 404, r.text
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "model_not_found"
    r = srv.http.post("/v1/fine_tuning/jobs", json={"model": gone, "training_file": train})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_available"
    assert srv.client.models.retrieve(before[0].fine_tuned_model_checkpoint).id == before[0].fine_tuned_model_checkpoint
