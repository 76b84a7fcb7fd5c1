"""The ``tunery`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from tunery.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tunery: fine-tuning as a service.")
db_app = typer.Typer(no_args_is_help=True, help="Metadata store schema.")
models_app = typer.Typer(no_args_is_help=True, help="Base models.")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Training data.")
app.add_typer(data_app, name="data")


def _settings(**overrides: Any) -> Settings:
    from tunery.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (TUNERY_HOST, default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (TUNERY_PORT, default 8000)."),
    data_dir: Path = typer.Option(None, help="State folder (TUNERY_DATA_DIR, default ./tunery-data)."),
) -> None:
    """Run the embedded server: API, scheduler, local trainer runner and serving engine in one process."""
    from tunery.server import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(_settings(host=host, port=port, data_dir=data_dir))


@app.command()
def demo(
    port: int = typer.Option(0, help="Port for the demo server (0: a free one)."),
    data_dir: Path = typer.Option(Path("tunery-demo"), help="State folder of the demo server."),
    keep_serving: bool = typer.Option(False, help="Leave the server running when the demo ends."),
) -> None:
    """Start a server, fine-tune SmolLM2 on a bundled dataset through the OpenAI SDK, compare the answers."""
    from tunery.demo import run_demo

    raise typer.Exit(run_demo(port=port, data_dir=data_dir, keep_serving=keep_serving))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to TUNERY_DATABASE_URL (or the embedded SQLite file)."""
    from tunery.db import Database

    s = _settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(s.resolved_database_url)
    database.upgrade()
    typer.echo(f"schema at revision {database.current_revision()}")


@models_app.command("prepare")
def models_prepare() -> None:
    """Convert the SmolLM2 demo model to safetensors in the model cache (done by `serve` when missing)."""
    from tunery.server import prepare_base_models

    s = _settings()
    prepare_base_models(s)
    typer.echo(str(s.demo_model_dir))


@models_app.command("list")
def models_list() -> None:
    """Configured base models and their folders."""
    for name, path in _settings().base_model_paths().items():
        typer.echo(f"{name}\t{path}")


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSONL training file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a training file on this machine, before uploading it: the same report the server makes."""
    import json

    from rich.console import Console
    from rich.table import Table

    from scheduler.validation import file_report
    from tunery.data import parse_jsonl
    from tunery.storage import CHUNK

    s = _settings()
    with open(path, "rb") as f:
        result = parse_jsonl(
            iter(lambda: f.read(CHUNK), b""), keep_records=False, max_line_bytes=s.max_line_bytes, max_lines=s.max_lines
        )
    report = file_report(path.name, result, 0)
    del report["created_at"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        console = Console()
        ok = report["status"] == "processed"
        console.print(
            f"[bold]{path}[/]: [{'green' if ok else 'red'}]{'valid' if ok else 'invalid'}[/] - "
            f"{report['examples']} example(s) in {report['lines']} line(s), format {report['format']}"
        )
        if report["errors"]["total"]:
            table = Table("line", "field", "problem", title=f"{report['errors']['total']} invalid line(s)")
            for e in report["errors"]["listed"]:
                table.add_row(str(e["line"]), e["field"] or "", e["message"])
            console.print(table)
        for w in report["warnings"]:
            console.print(f"[yellow]warning:[/] {w}")
    raise typer.Exit(0 if report["status"] == "processed" else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
