"""What the ``tunery`` commands share: the settings, and the metadata store of the commands that act on it directly
(``admin``, ``aliases``); for the commands that talk to a running server through its API, one way to reach it (the
official OpenAI SDK's client, or httpx for Tunery's extensions), to print its refusals (the API's message on stderr,
exit code 1, never a traceback) and to print its answers (``--json``: the objects as the API answers them; otherwise
rich tables)."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from openai import OpenAI
    from rich.console import Console

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


# The commands that go through a running server's API (``tunery files``, ``jobs``, ``models list``, ``chat``,
# ``evals``, ``exports``): where, and with which key, as the OpenAI SDK reads them.
BASE_URL = typer.Option(
    "http://127.0.0.1:8000/v1", "--base-url", envvar="OPENAI_BASE_URL", help="The API (OPENAI_BASE_URL)."
)
API_KEY = typer.Option("tunery", "--api-key", envvar="OPENAI_API_KEY", help="An API key (OPENAI_API_KEY).")
JSON_OUT = typer.Option(False, "--json", help="Print the API's objects as JSON (for scripts), not tables.")
DONE = ("succeeded", "failed", "cancelled")


def fail(message: str, code: int = 1) -> NoReturn:
    """``error: message`` on stderr, and exit ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def error_message(e: Exception) -> str:
    """What the API said, as one line: an error's ``message`` (OpenAI's envelope), else what the SDK knows."""
    import openai

    if isinstance(e, openai.APIStatusError):
        body = e.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return str(body["message"])
        text = e.response.text.strip()
        return f"HTTP {e.status_code}: {text[:200]}" if text else f"HTTP {e.status_code}"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__
        return f"cannot reach {e.request.url}: {cause or e}"
    return str(e)


@contextmanager
def api_errors() -> Iterator[None]:
    """The OpenAI SDK's errors (the API's refusals, an unreachable server) printed as ``error: <the API's message>``
    with exit code 1; Ctrl-C exits 130 quietly."""
    import openai

    try:
        yield
    except openai.OpenAIError as e:
        fail(error_message(e))
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(130) from None


F = TypeVar("F", bound=Callable[..., Any])


def api_command(f: F) -> F:
    """A command that talks to the API through the SDK: its errors as :func:`api_errors` prints them."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        with api_errors():
            return f(*args, **kwargs)

    return run  # type: ignore[return-value]


def client(base_url: str, api_key: str, **options: Any) -> OpenAI:
    """The official SDK's client of the server at ``base_url`` (its ``/v1``)."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key, **{"max_retries": 1, **options})


def stdout() -> Console:
    """Rich output on stdout; piped, as wide as a line needs (an id is never cut to a terminal's 80 columns)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 1000)


def print_json(value: Any) -> None:
    """An SDK object (the API's object: the fields it answered, Tunery's extensions included), a dict, or JSON text,
    pretty-printed on stdout."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif isinstance(value, (str, bytes)):
        value = json.loads(value)
    typer.echo(json.dumps(value, indent=2))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A rich table on stdout; ids are never cut (a column whose name ends in ``id``, ``model`` or ``file`` keeps its
    widest value's width)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for name in columns:
        whole = name.endswith(("id", "model", "file"))
        widest = max([len(str(r[columns.index(name)] or "")) for r in rows] + [len(name)])
        t.add_column(name, no_wrap=whole, min_width=widest if whole else None, overflow="fold")
    for r in rows:
        t.add_row(*("-" if v is None or v == "" else str(v) for v in r))
    stdout().print(t)


def fields(pairs: Sequence[tuple[str, Any]], title: str | None = None) -> None:
    """One object as a two-column table of its fields (``None`` ones left out)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=None, show_header=False, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for name, value in pairs:
        if value is not None and value != "":
            t.add_row(name, str(value))
    stdout().print(t)


def when(t: int | None) -> str | None:
    """A time as UTC, to the second."""
    return None if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def age(t: int | None, now: float | None = None) -> str | None:
    """How long ago: ``42s``, ``5m``, ``3h``, ``2d``."""
    if t is None:
        return None
    s = max(0, int((now or time.time()) - t))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def size(n: int | None) -> str | None:
    """Bytes as people read them: ``812 B``, ``1.2 MB``."""
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def key_values(pairs: Sequence[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict; a VALUE that is JSON (a number, ``true``, a list) is read as JSON, any
    other as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(f"{option} takes KEY=VALUE, not {pair!r}", 2)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def json_option(text: str | None, option: str) -> Any:
    """An option's JSON (or ``@path`` of a JSON file); a bad one is a usage error naming the option."""
    if text is None:
        return None
    try:
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as f:
                return json.load(f)
        return json.loads(text)
    except (OSError, ValueError) as e:
        fail(f"{option}: {e}", 2)


def is_terminal() -> bool:
    return sys.stderr.isatty()


def api_request(
    method: str,
    base_url: str,
    api_key: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """The API's answer to ``method`` on ``path`` (under /v1), whatever its status (for Tunery's extensions, which
    the SDK has no method for); an unreachable server is printed, with exit code 1."""
    import httpx

    url = base_url.rstrip("/") + path
    try:
        return httpx.request(
            method, url, json=body, params=params, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
    except httpx.HTTPError as e:
        fail(f"cannot reach {base_url}: {e}")


def api_call(
    method: str,
    base_url: str,
    api_key: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """The API's answer to ``method`` on ``path`` (under /v1); a refusal or an unreachable server is printed, with
    exit code 1 (the commands that go through a running server's API)."""
    r = api_request(method, base_url, api_key, path, body, params)
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        fail(message)
    return r
