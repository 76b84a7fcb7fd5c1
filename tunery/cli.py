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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
