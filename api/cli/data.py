"""``tunery data validate``: a training file's validation report, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from api.cli.common import settings_of

data_app = typer.Typer(no_args_is_help=True, help="Training data.")


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSONL training file."),
    model: str = typer.Option(
        "", "--model", help="Base model for token statistics and special tokens (default: TUNERY_VALIDATION_MODEL)."
    ),
    max_seq_length: int = typer.Option(1024, "--max-seq-length", help="Report examples longer than this."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a training file on this machine, before uploading it: the same report the server makes."""
    import json

    from rich.console import Console

    from api.cli.views import print_validation
    from scheduler.validation import file_report
    from tunery.filescan import ScanOptions, scan_path

    s = settings_of()
    models = s.base_model_paths()
    if model and model not in models:
        typer.echo(f"Unknown model {model!r}; configured: {', '.join(models) or 'none'}", err=True)
        raise typer.Exit(2)
    chosen = (model, models[model]) if model else s.validation_model_path()
    opts = ScanOptions(
        max_line_bytes=s.max_line_bytes,
        max_lines=s.max_lines,
        model_name=chosen[0] if chosen else "",
        model_folder=chosen[1] if chosen else None,
        max_seq_length=max_seq_length if chosen else None,
        near_dup_max_examples=s.near_dup_max_examples,
        near_dup_threshold=s.near_dup_threshold,
        workers=s.validation_workers,
    )
    scan = scan_path(path, opts)
    report = file_report(
        path.name,
        scan,
        0,
        model=chosen[0] if chosen else None,
        max_seq_length=opts.max_seq_length,
        for_job=bool(model),
    )
    del report["created_at"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_validation(Console(), report, str(path))
    raise typer.Exit(0 if report["status"] == "processed" else 1)
