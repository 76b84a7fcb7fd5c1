"""The `tunery` commands that talk to a running server through its API (docs/cli.md): files, jobs, models, chat, run as
a user runs them (typer's runner in process; `python -m api.cli` processes for the environment variables, the error
path and following a real tiny training job, paused and resumed on the way). Two servers for the module: one where
nothing trains (the jobs there stay as the commands leave them), one that trains the tiny model for the one job the
integration tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from api.cli import app
from tests.conftest import TINY, RunningServer, chat_lines, free_port, start_server
from tunery.db import Upload

KEY = "test-key"  # the key start_server's SDK client sends
NO_EVAL = '{"eval": {"enabled": false}}'  # the fastest job: no eval report at the end


def _server(root: Path, tiny_model_dir: Path, **overrides: Any) -> RunningServer:
    return start_server(
        root / "data",
        base_models={TINY: str(tiny_model_dir)},
        demo_model=False,
        model_cache_dir=root / "cache",
        api_keys=KEY,
        **overrides,
    )


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningServer]:
    """A server where nothing trains: its jobs stay queued until a command moves them."""
    srv = _server(tmp_path_factory.mktemp("cli-idle"), tiny_model_dir, max_concurrent_runs=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-data") / "train.jsonl"
    path.write_bytes(chat_lines(10))
    return path


def cli(srv: RunningServer, *args: str, code: int = 0) -> Result:
    """``tunery ARGS`` against ``srv``, in process; its exit code checked."""
    out = CliRunner().invoke(app, [*args, "--base-url", f"{srv.base_url}/v1", "--api-key", KEY])
    assert out.exit_code == code, (out.stdout, out.stderr, out.exception)
    if code:
        assert "Traceback" not in out.output and isinstance(out.exception, SystemExit), out.output
    return out


def process(
    srv: RunningServer | None, *args: str, base_url: str | None = None, key: str = KEY
) -> subprocess.Popen[str]:
    """``python -m api.cli ARGS`` started, reaching the server through OPENAI_BASE_URL and OPENAI_API_KEY alone."""
    url = base_url or (f"{srv.base_url}/v1" if srv else "")
    env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": key}
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def served(srv: RunningServer, path: str) -> Any:
    """What the API answers for ``path``: what --json must print."""
    r = srv.http.get(path, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_files_upload_list_get_and_delete(idle: RunningServer, train_file: Path) -> None:
    up = cli(idle, "files", "upload", str(train_file), "--wait")
    file_id = up.stdout.strip()  # the id alone on stdout: FILE=$(tunery files upload ...)
    assert file_id.startswith("file-") and "\n" not in file_id
    assert f"{file_id}: train.jsonl" in up.stderr and "processed" in up.stderr
    assert "valid - 10 example(s), 20 message(s) in 10 line(s), format chat" in up.stderr

    # Past --part-size it goes in parts through the Uploads API, checked against its MD5, into the same bytes.
    parts = json.loads(cli(idle, "files", "upload", str(train_file), "--part-size", "400", "--json").stdout)
    assert parts["object"] == "file" and parts["bytes"] == train_file.stat().st_size
    assert parts["filename"] == "train.jsonl" and parts["purpose"] == "fine-tune"
    assert idle.client.files.content(parts["id"]).read() == train_file.read_bytes()
    with idle.app.state.ctx.db.session() as s:  # made by a completed upload
        assert s.scalar(select(Upload.status).where(Upload.file_id == parts["id"])) == "completed"
    idle.client.files.wait_for_processing(parts["id"], poll_interval=0.2)  # no longer changing under the listings

    listed = json.loads(cli(idle, "files", "list", "--json").stdout)
    assert listed == served(idle, "/v1/files?limit=20")
    assert [f["id"] for f in listed["data"]] == [parts["id"], file_id]
    table = cli(idle, "files", "list", "--limit", "1").stdout.splitlines()
    assert table[0].split() == ["id", "filename", "purpose", "size", "status", "age"]
    assert table[1].split()[:4] == [parts["id"], "train.jsonl", "fine-tune", "1.5"] and len(table) == 2

    got = cli(idle, "files", "get", file_id)
    assert f"id        {file_id}" in got.stdout and "processed" in got.stdout
    assert "train.jsonl: valid - 10 example(s)" in got.stdout and "Tokens (tiny-llama)" in got.stdout
    assert json.loads(cli(idle, "files", "get", file_id, "--json").stdout) == served(idle, f"/v1/files/{file_id}")

    deleted = json.loads(cli(idle, "files", "delete", parts["id"], "--json").stdout)
    assert deleted == {"id": parts["id"], "object": "file", "deleted": True}
    assert cli(idle, "files", "delete", file_id).stdout == f"deleted {file_id}\n"
    gone = cli(idle, "files", "get", file_id, code=1)
    assert gone.stderr == f"error: No such File object: {file_id}\n" and gone.stdout == ""


def test_jobs_create_list_get_pause_resume_and_cancel(idle: RunningServer, train_file: Path) -> None:
    created = cli(
        idle,
        "jobs",
        "create",
        TINY,
        str(train_file),  # a local file: uploaded first
        "--validation-file",
        str(train_file),
        "--suffix",
        "cli",
        "--seed",
        "7",
        "--n-epochs",
        "2",
        "--batch-size",
        "auto",
        "--learning-rate-multiplier",
        "0.5",
        "--metadata",
        "team=search",
        "--tunery",
        NO_EVAL,
        "--json",
    )
    job = json.loads(created.stdout)
    assert created.stderr.count("uploaded ") == 2
    assert job["object"] == "fine_tuning.job" and job["model"] == TINY
    assert job["training_file"].startswith("file-") and job["validation_file"].startswith("file-")
    assert (job["user_provided_suffix"], job["seed"], job["metadata"]) == ("cli", 7, {"team": "search"})
    assert job["method"]["type"] == "supervised"
    asked = job["method"]["supervised"]["hyperparameters"]
    assert (asked["n_epochs"], asked["batch_size"], asked["learning_rate_multiplier"]) == (2, "auto", 0.5)
    job_id = job["id"]
    idle.wait_job(job_id, {"queued"}, timeout=30)

    plain = cli(idle, "jobs", "create", TINY, job["training_file"], "--method", "dpo", "--beta", "0.25")
    dpo_id = plain.stdout.strip()  # the id alone on stdout
    assert dpo_id.startswith("ftjob-") and "\n" not in dpo_id
    dpo = idle.client.fine_tuning.jobs.retrieve(dpo_id)
    assert dpo.method is not None and dpo.method.type == "dpo"
    assert dpo.method.dpo is not None and dpo.method.dpo.hyperparameters is not None
    assert dpo.method.dpo.hyperparameters.beta == 0.25

    listed = json.loads(cli(idle, "jobs", "list", "--json").stdout)
    assert [j["id"] for j in listed["data"]] == [dpo_id, job_id]
    rows = [line.split() for line in cli(idle, "jobs", "list").stdout.splitlines()]
    assert rows[0] == ["id", "status", "model", "method", "fine-tuned", "model", "age"]
    assert [r[:4] for r in rows[1:]][1] == [job_id, "queued", TINY, "supervised"]

    got = cli(idle, "jobs", "get", job_id).stdout
    assert f"id                {job_id}" in got and '"n_epochs": 2' in got and '{"team": "search"}' in got
    assert json.loads(cli(idle, "jobs", "get", job_id, "--json").stdout) == served(
        idle, f"/v1/fine_tuning/jobs/{job_id}"
    )

    # Refusals are the API's message, exit 1.
    assert cli(idle, "jobs", "pause", job_id, code=1).stderr == (
        f"error: Job {job_id} is queued; only a running job can be paused.\n"
    )
    assert "only a paused job can be resumed" in cli(idle, "jobs", "resume", job_id, code=1).stderr

    assert cli(idle, "jobs", "cancel", job_id).stdout == f"{job_id}: cancelled\n"
    assert "has already" in cli(idle, "jobs", "cancel", job_id, "--json", code=1).stderr
    # Following a job that ended cancelled: its events, then exit 1 with why.
    follow = cli(idle, "jobs", "follow", job_id, code=1)
    assert "Created fine-tuning job" in follow.stderr and follow.stderr.endswith(f"error: {job_id} cancelled\n")
    # The DPO job failed (a chat file is no preference file): --json is every event, then the job; exit 1.
    failed = idle.wait_job(dpo_id, {"failed"}, timeout=30)
    assert failed.error is not None and failed.error.code == "invalid_training_file"
    follow = cli(idle, "jobs", "follow", dpo_id, "--json", code=1)
    assert follow.stderr == f"error: {dpo_id} failed: {failed.error.message} (invalid_training_file)\n"
    lines = [json.loads(line) for line in follow.stdout.splitlines()]
    assert [e["object"] for e in lines] == ["fine_tuning.job.event"] * (len(lines) - 1) + ["fine_tuning.job"]
    assert lines[-1] == served(idle, f"/v1/fine_tuning/jobs/{dpo_id}")
    events = served(idle, f"/v1/fine_tuning/jobs/{dpo_id}/events?limit=100")["data"]
    assert lines[:-1] == events[::-1]  # every event once, oldest first, as the API answers them

    missing = cli(idle, "jobs", "create", TINY, "nowhere/train.jsonl", code=2)
    assert "no file 'nowhere/train.jsonl' here" in missing.stderr


def test_errors_are_the_apis_message_and_exit_1_without_a_traceback(idle: RunningServer) -> None:
    """Real processes, configured by OPENAI_BASE_URL and OPENAI_API_KEY alone (run side by side); then in process."""
    closed = f"http://127.0.0.1:{free_port()}/v1"
    runs = {
        "ok": process(idle, "files", "list", "--json"),
        "bad key": process(idle, "files", "list", key="sk-wrong"),
        "unreachable": process(None, "models", "list", base_url=closed),
    }
    done = {name: (p.wait(60), *p.communicate()) for name, p in runs.items()}
    for name, (code, out, err) in done.items():
        assert "Traceback" not in err, (name, err)
        assert code == (0 if name == "ok" else 1), (name, out, err)
    assert json.loads(done["ok"][1]) == served(idle, "/v1/files")
    assert done["bad key"][2].startswith("error: Incorrect API key provided") and done["bad key"][1] == ""
    assert done["unreachable"][2].startswith(f"error: cannot reach {closed}/models: ")

    assert cli(idle, "jobs", "get", "ftjob-nope", code=1).stderr == "error: No such fine-tuning job: ftjob-nope\n"
    unknown = cli(idle, "chat", "ft:tiny-llama:personal:x:nope1234", "-m", "Hi", code=1).stderr
    assert unknown.startswith("error: The model `ft:tiny-llama:personal:x:nope1234` does not exist")
    assert cli(idle, "jobs", "follow", "ftjob-nope", code=1).stderr == "error: No such fine-tuning job: ftjob-nope\n"


# ---- a real tiny training job ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningServer]:
    srv = _server(tmp_path_factory.mktemp("cli-train"), tiny_model_dir, serving_max_new_tokens=8)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def followed(trainer: RunningServer, train_file: Path) -> tuple[int, str, str]:
    """`tunery jobs create FILE --follow` of the fewest steps (10 examples, batches of 5, one epoch, no eval), run
    to its end: (exit code, stdout, stderr)."""
    p = process(
        trainer,
        "jobs",
        "create",
        TINY,
        str(train_file),
        "--n-epochs",
        "1",
        "--batch-size",
        "5",
        "--seed",
        "3",
        "--suffix",
        "cli",
        "--tunery",
        NO_EVAL,
        "--follow",
    )
    out, err = p.communicate(timeout=240)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def model(followed: tuple[int, str, str]) -> str:
    code, out, err = followed
    assert code == 0, (out, err)
    return out.strip()


@pytest.mark.integration
def test_create_and_follow_a_job_until_it_succeeds(trainer: RunningServer, followed: tuple[int, str, str]) -> None:
    code, out, err = followed
    assert code == 0, (out, err)
    [job] = trainer.client.fine_tuning.jobs.list().data
    assert job.status == "succeeded" and out == f"{job.fine_tuned_model}\n"  # stdout: MODEL=$(... --follow)
    assert job.fine_tuned_model.startswith(f"ft:{TINY}:personal:cli:")
    assert f"created {job.id}" in err and "Training started: 10 examples, 2 steps" in err
    assert "Step 1/2: training loss=" in err and "Step 2/2: training loss=" in err  # no terminal: every event a line
    summary = next(line for line in err.splitlines() if line.startswith("training loss "))
    assert "over 2 step(s)" in summary and summary.split()[-1] in ("█▁", "▁█", "▄▄")  # the loss sparkline
    assert f"{job.id} succeeded in " in err

    # Following it again (it has ended): every event as JSON, then the job; exit 0.
    lines = [json.loads(line) for line in cli(trainer, "jobs", "follow", job.id, "--json").stdout.splitlines()]
    metrics = [e for e in lines if e.get("type") == "metrics"]
    assert [e["data"]["step"] for e in metrics] == [1, 2] and all("train_loss" in e["data"] for e in metrics)
    assert lines[-1]["id"] == job.id and lines[-1]["fine_tuned_model"] == job.fine_tuned_model
    got = cli(trainer, "jobs", "get", job.id).stdout
    assert "Checkpoints" in got and f"{job.fine_tuned_model}:ckpt-step-2" in got


@pytest.mark.integration
def test_models_list_shows_the_fine_tuned_model_and_its_checkpoint(trainer: RunningServer, model: str) -> None:
    listed = json.loads(cli(trainer, "models", "list", "--json").stdout)
    assert listed == served(trainer, "/v1/models")
    assert {TINY, model, f"{model}:ckpt-step-2"} <= {m["id"] for m in listed["data"]}
    only = json.loads(cli(trainer, "models", "list", "--kind", "fine-tuned", "--json").stdout)
    assert [m["id"] for m in only["data"]] == [model]
    rows = {line.split()[0]: line.split()[1] for line in cli(trainer, "models", "list").stdout.splitlines()[1:]}
    assert rows == {TINY: "base", model: "fine-tuned", f"{model}:ckpt-step-2": "checkpoint"}
    assert json.loads(cli(trainer, "models", "get", model, "--json").stdout)["id"] == model


@pytest.mark.integration
def test_chat_with_the_fine_tuned_model(trainer: RunningServer, model: str) -> None:
    greedy = ("--max-tokens", "6", "--temperature", "0", "--seed", "1")

    def reply(*turns: str) -> str:
        """The SDK's greedy answer to a conversation (user, assistant, user, ...)."""
        messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
        create = trainer.client.chat.completions.create
        r = create(model=model, messages=messages, max_tokens=6, temperature=0, seed=1)  # type: ignore[arg-type]
        return r.choices[0].message.content or ""

    text = reply("Question number 3?")
    assert text
    assert cli(trainer, "chat", model, "-m", "Question number 3?", *greedy).stdout == f"{text}\n"
    assert cli(trainer, "chat", model, "-m", "Question number 3?", "--stream", *greedy).stdout == f"{text}\n"
    completion = json.loads(cli(trainer, "chat", model, "-m", "Question number 3?", "--json", *greedy).stdout)
    assert completion["object"] == "chat.completion" and completion["model"] == model
    assert completion["choices"][0]["message"]["content"] == text
    # A conversation, one turn a line, each with the turns before it; /reset forgets them, /exit ends it.
    repl = CliRunner().invoke(
        app,
        ["chat", model, *greedy, "--base-url", f"{trainer.base_url}/v1", "--api-key", KEY],
        input="Question number 3?\nAnd then?\n/reset\nQuestion number 3?\n/exit\nnever sent\n",
    )
    assert repl.exit_code == 0, repl.output
    then = reply("Question number 3?", text, "And then?")
    assert repl.stdout == f"{text}\n{then}\n{text}\n"


@pytest.mark.integration
def test_pause_and_resume_a_running_job(trainer: RunningServer, model: str, tmp_path: Path) -> None:
    """`tunery jobs pause` while a job trains, `tunery jobs resume` once its run has stopped, with `tunery jobs
    follow` watching throughout: the follower says it is paused and ends with the resumed run's success."""
    steps = 40
    data = tmp_path / "long.jsonl"
    data.write_bytes(chat_lines(steps))
    args = ("--n-epochs", "1", "--batch-size", "1", "--seed", "7", "--tunery", NO_EVAL)
    job_id = cli(trainer, "jobs", "create", TINY, str(data), *args).stdout.strip()
    follower = process(trainer, "jobs", "follow", job_id, "--interval", "0.2")
    try:
        deadline = time.monotonic() + 240
        while not any(m.startswith("Step 2/") for m in trainer.events(job_id)):
            assert time.monotonic() < deadline and follower.poll() is None, trainer.events(job_id)
            time.sleep(0.2)
        assert cli(trainer, "jobs", "pause", job_id).stdout == f"{job_id}: paused\n"
        again = cli(trainer, "jobs", "pause", job_id, code=1).stderr
        assert again == f"error: Job {job_id} is paused; only a running job can be paused.\n"
        while not (stopped := [m for m in trainer.events(job_id) if m.startswith("Fine-tuning job paused at step")]):
            assert time.monotonic() < deadline, trainer.events(job_id)
            time.sleep(0.2)
        paused_at = int(stopped[0].rsplit(" ", 1)[1])
        assert 2 <= paused_at < steps
        resumed = json.loads(cli(trainer, "jobs", "resume", job_id, "--json").stdout)
        assert resumed["id"] == job_id and resumed["status"] in ("queued", "running")
        out, err = follower.communicate(timeout=300)
    finally:
        follower.kill()
    assert follower.returncode == 0, (out, err)
    job = trainer.client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded" and out == f"{job.fine_tuned_model}\n"
    assert f"{job_id} is paused: `tunery jobs resume {job_id}` continues it" in err
    assert f"Resuming from the checkpoint at step {paused_at}/{steps}" in err and f"{job_id} succeeded in " in err
    assert err.index(f"Fine-tuning job paused at step {paused_at}") < err.index("Resuming from the checkpoint")
    events = trainer.client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    assert sorted(e.data["step"] for e in events if e.type == "metrics") == list(range(1, steps + 1))


def test_sparkline() -> None:
    from api.cli.views import sparkline

    assert sparkline([8.0, 4.5, 1.0]) == "█▅▁"
    assert sparkline([2.5, 2.5]) == "▄▄" and sparkline([]) == ""
    assert sparkline([1.0, float("nan"), 0.0]) == "█▁"  # a NaN loss is left out
    assert sparkline([float(i) for i in range(100)], width=8) == "▁▂▃▄▅▆▇█"  # the last 8
