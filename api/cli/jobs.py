"""``tunery jobs``: fine-tuning jobs, through a running server's API."""

from __future__ import annotations

import typer

jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs, through a running server's API.")


@jobs_app.command("report")
def jobs_report(
    job_id: str = typer.Argument(..., help="The job (ftjob-...)."),
    checkpoint: str = typer.Option(
        None, "--checkpoint", help="A checkpoint's report (ftckpt_...) instead of the job's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report's JSON."),
    base_url: str = typer.Option(
        "http://127.0.0.1:8000/v1", envvar="OPENAI_BASE_URL", help="The API (OPENAI_BASE_URL)."
    ),
    api_key: str = typer.Option("tunery", envvar="OPENAI_API_KEY", help="An API key (OPENAI_API_KEY)."),
) -> None:
    """A job's eval report (or one checkpoint's): validation loss against the base, forgetting, samples, the gate
    (docs/evals.md)."""
    import httpx

    from api.report_view import print_report
    from tunery.evalreport import EvalReport

    path = f"/fine_tuning/jobs/{job_id}" + (f"/checkpoints/{checkpoint}" if checkpoint else "") + "/eval_report"
    try:
        r = httpx.get(base_url.rstrip("/") + path, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    except httpx.HTTPError as e:
        typer.echo(f"error: cannot reach {base_url}: {e}", err=True)
        raise typer.Exit(1) from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(r.text)
        return
    print_report(EvalReport.model_validate(r.json()))


_PROJECT = typer.Option(None, "--project", help="The project's id (default: TUNERY_PROJECT_ID).")
_NOTE = typer.Option(None, "--note", help="Why: kept with the version.")
