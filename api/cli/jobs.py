"""``tunery jobs``: fine-tuning jobs, through a running server's API: create (uploading a local training file first),
list, get, follow (a live progress bar and loss sparkline until the job ends), cancel, pause, resume, and a job's
eval report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from api.cli.common import (
    API_KEY,
    BASE_URL,
    DONE,
    JSON_OUT,
    age,
    api_call,
    api_command,
    client,
    fail,
    fields,
    is_terminal,
    json_option,
    key_values,
    print_json,
    stderr,
    table,
    when,
)

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
    from rich.console import Console

jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs, through a running server's API.")

_JOB = typer.Argument(..., help="The job (ftjob-...).")
METHODS = ("supervised", "dpo", "reinforcement")


def _number(value: str | None, option: str) -> int | float | str | None:
    """A hyperparameter's value: ``auto``, or a number."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        fail(f"{option} takes a number or auto, not {value!r}", 2)


def file_id_of(c: OpenAI, ref: str, option: str) -> str:
    """A training or validation file given as a local path (uploaded first) or as the id of a file of the
    project."""
    path = Path(ref)
    if path.is_file():
        from api.cli.files import upload_file

        f = upload_file(c, path, "fine-tune")
        stderr().print(f"uploaded {path} as {f.id}")
        return f.id
    if ref.startswith("file-") or not (path.suffix or "/" in ref):
        return ref
    fail(f"{option}: no file {ref!r} here, and it is no file id (file-...)", 2)


def hyperparameters_of(job: Any) -> dict[str, Any]:
    """The job's hyperparameters: its method's section (OpenAI's place for them), else the top-level ones."""
    d = job.to_dict() if hasattr(job, "to_dict") else dict(job)
    method = d.get("method") or {}
    section = method.get(method.get("type") or "", {}) or {}
    return dict(section.get("hyperparameters") or d.get("hyperparameters") or {})


def _job_row(j: FineTuningJob) -> tuple[Any, ...]:
    method = j.method.type if j.method else "supervised"
    return (j.id, j.status, j.model, method, j.fine_tuned_model, age(j.created_at))


@jobs_app.command("create")
@api_command
def jobs_create(
    model: str = typer.Argument(..., help="The model to fine-tune: a base model, or an ft:... model to continue."),
    training_file: str = typer.Argument(
        ..., help="The training file: a file id (file-...), or a local path, uploaded first."
    ),
    validation_file: str = typer.Option(
        None, "--validation-file", help="A validation file: a file id, or a local path, uploaded first."
    ),
    suffix: str = typer.Option(None, "--suffix", help="Up to 64 characters in the fine-tuned model's name."),
    seed: int = typer.Option(None, "--seed", help="The seed of the run (random when unset)."),
    method: str = typer.Option(None, "--method", help="supervised (the server's default), dpo or reinforcement."),
    n_epochs: str = typer.Option(None, "--n-epochs", help="Epochs: a number, or auto."),
    batch_size: str = typer.Option(None, "--batch-size", help="Examples per step: a number, or auto."),
    learning_rate_multiplier: str = typer.Option(
        None, "--learning-rate-multiplier", help="Scales the base learning rate: a number, or auto."
    ),
    beta: str = typer.Option(None, "--beta", help="DPO's beta: a number, or auto."),
    hyperparameter: list[str] = typer.Option(
        [], "--hyperparameter", "-H", help="Any other hyperparameter of the method, KEY=VALUE (repeatable)."
    ),
    grader: str = typer.Option(None, "--grader", help="The reinforcement method's grader: JSON, or @file.json."),
    metadata: list[str] = typer.Option([], "--metadata", help="KEY=VALUE kept with the job (repeatable)."),
    integration: list[str] = typer.Option(
        [], "--integration", help='An integration as JSON, e.g. {"type": "wandb", "wandb": {...}} (repeatable).'
    ),
    tunery: str = typer.Option(
        None, "--tunery", help="Tunery's extensions of the job (its `tunery` object): JSON, or @file.json."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Follow the job until it ends, as `jobs follow`."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Create a fine-tuning job; print its id (with --json, the job). With --follow, follow it to its end and print
    the fine-tuned model; exit 1 if it fails or is cancelled."""
    if method is not None and method not in METHODS:
        fail(f"--method: one of {', '.join(METHODS)}, not {method!r}", 2)
    hp: dict[str, Any] = {
        k: v
        for k, v in (
            ("n_epochs", _number(n_epochs, "--n-epochs")),
            ("batch_size", _number(batch_size, "--batch-size")),
            ("learning_rate_multiplier", _number(learning_rate_multiplier, "--learning-rate-multiplier")),
            ("beta", _number(beta, "--beta")),
        )
        if v is not None
    }
    hp.update(key_values(hyperparameter, "--hyperparameter"))
    body: dict[str, Any] = {}
    section: dict[str, Any] = {"hyperparameters": hp} if hp else {}
    if grader is not None:
        section["grader"] = json_option(grader, "--grader")
    if method is not None or section:
        kind = method or "supervised"
        body["method"] = {"type": kind, kind: section} if section else {"type": kind}
    for name, value in (("suffix", suffix), ("seed", seed)):
        if value is not None:
            body[name] = value
    if metadata:
        body["metadata"] = {k: str(v) for k, v in key_values(metadata, "--metadata").items()}
    if integration:
        body["integrations"] = [json_option(i, "--integration") for i in integration]
    extra = {"tunery": json_option(tunery, "--tunery")} if tunery is not None else None
    c = client(base_url, api_key)
    body["training_file"] = file_id_of(c, training_file, "TRAINING_FILE")
    if validation_file is not None:
        body["validation_file"] = file_id_of(c, validation_file, "--validation-file")
    job = c.fine_tuning.jobs.create(model=model, **body, extra_body=extra)
    if follow:
        if not as_json:
            stderr().print(f"created {job.id}")
        follow_job(c, job.id, as_json)
    elif as_json:
        print_json(job)
    else:
        typer.echo(job.id)


@jobs_app.command("list")
@api_command
def jobs_list(
    limit: int = typer.Option(20, "--limit", min=1, help="How many (newest first)."),
    after: str = typer.Option(None, "--after", help="The page after this job id."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """The project's fine-tuning jobs, newest first: id, status, model, method, fine-tuned model, age."""
    options: dict[str, Any] = {"limit": limit}
    if after:
        options["after"] = after
    page = client(base_url, api_key).fine_tuning.jobs.list(**options)
    if as_json:
        print_json(page)
        return
    table(("id", "status", "model", "method", "fine-tuned model", "age"), [_job_row(j) for j in page.data])
    if page.has_more and page.data:
        stderr().print(f"more: --after {page.data[-1].id}")


@jobs_app.command("get")
@api_command
def jobs_get(job_id: str = _JOB, as_json: bool = JSON_OUT, base_url: str = BASE_URL, api_key: str = API_KEY) -> None:
    """A job: its status, models, files, method and hyperparameters, times, error; and its checkpoints."""
    c = client(base_url, api_key)
    job = c.fine_tuning.jobs.retrieve(job_id)
    if as_json:
        print_json(job)
        return
    error = f"{job.error.message} ({job.error.code})" if job.error and job.error.message else None
    fields(
        [
            ("id", job.id),
            ("status", job.status),
            ("model", job.model),
            ("fine-tuned model", job.fine_tuned_model),
            ("method", job.method.type if job.method else "supervised"),
            ("hyperparameters", json.dumps(hyperparameters_of(job))),
            ("training file", job.training_file),
            ("validation file", job.validation_file),
            ("suffix", getattr(job, "user_provided_suffix", None)),
            ("seed", job.seed),
            ("created", when(job.created_at)),
            ("finished", when(job.finished_at)),
            ("estimated finish", when(job.estimated_finish)),
            ("trained tokens", job.trained_tokens),
            ("result files", ", ".join(job.result_files) or None),
            ("metadata", json.dumps(job.metadata) if job.metadata else None),
            ("error", error),
        ]
    )
    checkpoints = c.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data
    if checkpoints:
        rows = []
        for k in sorted(checkpoints, key=lambda k: k.step_number):
            m = k.metrics
            rows.append((k.step_number, k.fine_tuned_model_checkpoint, _loss(m.train_loss), _loss(m.valid_loss)))
        typer.echo()
        table(("step", "checkpoint model", "train loss", "valid loss"), rows, title="Checkpoints")


def _loss(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _transition(command: str, job_id: str, as_json: bool, base_url: str, api_key: str) -> None:
    jobs = client(base_url, api_key).fine_tuning.jobs
    job = {"cancel": jobs.cancel, "pause": jobs.pause, "resume": jobs.resume}[command](job_id)
    if as_json:
        print_json(job)
    else:
        typer.echo(f"{job.id}: {job.status}")


@jobs_app.command("cancel")
@api_command
def jobs_cancel(job_id: str = _JOB, as_json: bool = JSON_OUT, base_url: str = BASE_URL, api_key: str = API_KEY) -> None:
    """Cancel a job that has not ended; print its status."""
    _transition("cancel", job_id, as_json, base_url, api_key)


@jobs_app.command("pause")
@api_command
def jobs_pause(job_id: str = _JOB, as_json: bool = JSON_OUT, base_url: str = BASE_URL, api_key: str = API_KEY) -> None:
    """Pause a running job: its trainer saves its state at the next step and stops."""
    _transition("pause", job_id, as_json, base_url, api_key)


@jobs_app.command("resume")
@api_command
def jobs_resume(job_id: str = _JOB, as_json: bool = JSON_OUT, base_url: str = BASE_URL, api_key: str = API_KEY) -> None:
    """Resume a paused job: queued again, to continue from its saved state."""
    _transition("resume", job_id, as_json, base_url, api_key)


@jobs_app.command("follow")
@api_command
def jobs_follow(
    job_id: str = _JOB,
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between two looks at the job."),
    as_json: bool = typer.Option(
        False, "--json", help="JSON lines on stdout: each event as the API answers it, then the ended job."
    ),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Follow a job until it ends: its events, a live progress bar with the training loss and its sparkline; then
    print the fine-tuned model. Exit 1 if the job failed or was cancelled. Ctrl-C stops following (the job goes
    on)."""
    follow_job(client(base_url, api_key), job_id, as_json, interval)


def new_events(c: OpenAI, job_id: str, last: str | None) -> list[FineTuningJobEvent]:
    """The job's events after ``last`` (the newest one seen; all without it), oldest first."""
    fresh = []
    for e in c.fine_tuning.jobs.list_events(job_id, limit=100):  # newest first, the next pages fetched as needed
        if e.id == last:
            break
        fresh.append(e)
    fresh.reverse()
    return fresh


class _Follower:
    """What ``jobs follow`` shows: event lines, and a progress bar (steps, loss, sparkline) in a terminal."""

    def __init__(self, job_id: str, as_json: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.job_id, self.as_json = job_id, as_json
        self.console: Console = stderr()
        self.live = is_terminal() and not as_json
        self.losses: list[float] = []
        self.valid_losses: list[float] = []
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TextColumn("[cyan]{task.fields[spark]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task(job_id, total=None, loss="", spark="")
        self.last_status: str | None = None

    def __enter__(self) -> _Follower:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def event(self, e: FineTuningJobEvent) -> None:
        if self.as_json:
            typer.echo(json.dumps(e.to_dict()))
        data = e.data if isinstance(e.data, dict) else {}
        if data.get("total_steps"):
            self.progress.update(self.task, total=int(data["total_steps"]))
        if e.type == "metrics":
            if isinstance(data.get("train_loss"), (int, float)):
                self.losses.append(float(data["train_loss"]))
            if isinstance(data.get("valid_loss"), (int, float)):
                self.valid_losses.append(float(data["valid_loss"]))
            loss = f"loss {self.losses[-1]:.4f}" if self.losses else ""
            from api.cli.views import sparkline

            self.progress.update(self.task, completed=int(data.get("step", 0)), loss=loss, spark=sparkline(self.losses))
            if self.live:
                return  # the bar shows it
        if not self.as_json:
            style = {"error": "red", "warn": "yellow"}.get(e.level, "")
            line = f"[dim]{when(e.created_at)}[/dim] " + (f"[{style}]{e.message}[/{style}]" if style else e.message)
            self.console.print(line, markup=True, highlight=False)

    def status(self, job: FineTuningJob) -> None:
        self.progress.update(self.task, description=f"{job.id} {job.status}")
        if job.status == "paused" and self.last_status != "paused" and not self.as_json:
            self.console.print(f"[yellow]{job.id} is paused[/yellow]: `tunery jobs resume {job.id}` continues it")
        self.last_status = job.status

    def summary(self) -> None:
        from api.cli.views import sparkline

        if self.losses:
            self.console.print(
                f"training loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f} over {len(self.losses)} step(s)  "
                f"[cyan]{sparkline(self.losses, 60)}[/cyan]"
            )
        if self.valid_losses:
            self.console.print(
                f"validation loss {self.valid_losses[0]:.4f} -> {self.valid_losses[-1]:.4f}  "
                f"[cyan]{sparkline(self.valid_losses, 60)}[/cyan]"
            )


def follow_job(c: OpenAI, job_id: str, as_json: bool, interval: float = 1.0) -> FineTuningJob:
    """Show the job's events and progress until it ends (:class:`_Follower`); then print the fine-tuned model (with
    ``as_json``: the job, as a JSON line). A job that failed or was cancelled exits 1, saying why."""
    last: str | None = None
    try:
        with _Follower(job_id, as_json) as shown:
            while True:
                job = c.fine_tuning.jobs.retrieve(job_id)  # before its events: its final event comes with its status
                shown.status(job)
                for e in new_events(c, job_id, last):
                    shown.event(e)
                    last = e.id
                if job.status in DONE:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        typer.echo(f"stopped following {job_id}; the job goes on (tunery jobs follow {job_id})", err=True)
        raise typer.Exit(130) from None
    if not as_json:
        shown.summary()
    if as_json:
        typer.echo(json.dumps(job.to_dict()))
    if job.status == "succeeded":
        if not as_json:
            took = f" in {job.finished_at - job.created_at}s" if job.finished_at else ""
            stderr().print(f"[green]{job.id} succeeded[/green]{took}")
            typer.echo(job.fine_tuned_model)
        return job
    error = job.error
    why = f": {error.message} ({error.code})" if error and error.message else ""
    fail(f"{job.id} {job.status}{why}")


@jobs_app.command("report")
def jobs_report(
    job_id: str = _JOB,
    checkpoint: str = typer.Option(
        None, "--checkpoint", help="A checkpoint's report (ftckpt_...) instead of the job's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report's JSON."),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """A job's eval report (or one checkpoint's): validation loss against the base, forgetting, samples, the gate
    (docs/evals.md)."""
    from api.report_view import print_report
    from tunery.evalreport import EvalReport

    path = f"/fine_tuning/jobs/{job_id}" + (f"/checkpoints/{checkpoint}" if checkpoint else "") + "/eval_report"
    r = api_call("GET", base_url, api_key, path)
    if as_json:
        typer.echo(r.text)
        return
    print_report(EvalReport.model_validate(r.json()))
