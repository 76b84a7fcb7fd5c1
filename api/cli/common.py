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


# The commands that go through a running server's API (``tunery jobs``, ``evals``, ``exports``): where, and with
# which key, as the OpenAI SDK reads them.
BASE_URL = typer.Option("http://127.0.0.1:8000/v1", envvar="OPENAI_BASE_URL", help="The API (OPENAI_BASE_URL).")
API_KEY = typer.Option("tunery", envvar="OPENAI_API_KEY", help="An API key (OPENAI_API_KEY).")
DONE = ("succeeded", "failed", "cancelled")


def api_call(method: str, base_url: str, api_key: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The API's answer to ``method`` on ``path`` (under /v1); a refusal or an unreachable server is printed, with
    exit code 1 (the commands that go through a running server's API)."""
    import httpx

    url = base_url.rstrip("/") + path
    try:
        r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
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
    return r
