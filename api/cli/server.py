"""``tunery serve``, ``tunery demo`` and ``tunery db``: run the server, the demo, the schema's migrations."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from api.cli.common import settings_of

db_app = typer.Typer(no_args_is_help=True, help="Metadata store schema.")


def serve(
    host: str = typer.Option(None, help="Address to listen on (TUNERY_HOST, default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (TUNERY_PORT, default 8000)."),
    data_dir: Path = typer.Option(None, help="State folder (TUNERY_DATA_DIR, default ./tunery-data)."),
    role: str = typer.Option(
        "all",
        help="all: API + scheduler + serving in one process (embedded mode); api: the HTTP API only (needs "
        "TUNERY_API_KEYS, or TUNERY_ALLOW_OPEN=true); scheduler: the scheduler loop and gRPC reporting service, with "
        "/healthz on the port.",
    ),
) -> None:
    """Run the server: API, scheduler, trainer backend and serving engine (or one role of them)."""
    from api.server import ROLES
    from api.server import serve as run
    from tunery.db import SchemaOutOfDate
    from tunery.settings import UnsafeSettings
    from tunery.storage import ObjectStoreError

    if role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(settings_of(host=host, port=port, data_dir=data_dir), role=role)
    except ObjectStoreError as e:  # a missing bucket or wrong credentials: say so, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except (SchemaOutOfDate, UnsafeSettings) as e:  # e.g. --role api without TUNERY_API_KEYS
        typer.echo(f"tunery serve: {e}", err=True)
        raise typer.Exit(2) from None


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

    s = settings_of()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(s.resolved_database_url)
    database.upgrade()
    typer.echo(f"schema at revision {database.current_revision()} ({database.display_url()})")
    database.engine.dispose()
