"""``tunery jobs``: fine-tuning jobs, through a running server's API."""

from __future__ import annotations

import typer

from api.cli.common import API_KEY, BASE_URL, api_call

jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs, through a running server's API.")


@jobs_app.command("report")
def jobs_report(
    job_id: str = typer.Argument(..., help="The job (ftjob-...)."),
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
