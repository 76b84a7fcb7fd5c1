"""What the ``tunery`` commands share: the settings, and the metadata store of the commands that act on it directly
(``admin``, ``aliases``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from tunery.settings import Settings


def settings_of(**overrides: Any) -> Settings:
    from tunery.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def admin_database(s: Settings):  # type: ignore[no-untyped-def]
    """The metadata store, its schema current (the embedded SQLite file is migrated, as `serve` does), its default
    organization and project rows made if missing."""
    from tunery.db import Database, SchemaOutOfDate
    from tunery.tenancy import ensure_default_rows

    s.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(s.resolved_database_url)
    try:
        if s.resolved_database_url.startswith("sqlite"):
            database.upgrade()
        database.check_schema()
    except SchemaOutOfDate as e:
        database.engine.dispose()
        typer.echo(f"tunery admin: {e}", err=True)
        raise typer.Exit(2) from None
    ensure_default_rows(database, s)
    return database


def expiry(days: int | None) -> int | None:
    from tunery.db.ops import now

    return None if days is None else now() + days * 86400
