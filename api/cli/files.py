"""``tunery files``: the project's files (training data, results), through a running server's API: upload (in parts
through the Uploads API past ``--part-size``, with a progress bar in a terminal), list, get (with the validation
report's summary), delete."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from api.cli.common import (
    API_KEY,
    BASE_URL,
    JSON_OUT,
    age,
    api_command,
    api_request,
    client,
    fields,
    is_terminal,
    print_json,
    size,
    stderr,
    stdout,
    table,
    when,
)

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import FileObject

files_app = typer.Typer(no_args_is_help=True, help="The project's files, through a running server's API.")

PART_SIZE = 64 * 1024 * 1024  # the server's largest upload part (TUNERY_MAX_UPLOAD_PART_BYTES)
PROGRESS_FROM = 1024 * 1024  # a bar for files from this size on, in a terminal
MIME_TYPES = {".jsonl": "text/jsonl", ".json": "application/json", ".csv": "text/csv", ".txt": "text/plain"}


class _Reading(io.RawIOBase):
    """A file read through, telling ``seen`` how far it has been read (the SDK streams it to the server)."""

    def __init__(self, f: io.BufferedReader, seen: Callable[[int], None]) -> None:
        super().__init__()
        self._f, self._seen = f, seen

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        data = self._f.read(-1 if n is None else n)
        self._seen(self._f.tell())
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        pos = self._f.seek(offset, whence)
        self._seen(pos)
        return pos

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()


def upload_file(c: OpenAI, path: Path, purpose: str, part_size: int = PART_SIZE) -> FileObject:
    """``path`` uploaded as a file of the project: in one request up to ``part_size`` bytes, past it through the
    Uploads API in parts of that size (checked against its MD5 by the server). A bar on stderr shows the bytes sent
    when stderr is a terminal and the file is large enough to wait for."""
    from contextlib import nullcontext, suppress

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    total = path.stat().st_size
    shown = is_terminal() and total >= PROGRESS_FROM
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr(),
        transient=True,
    )
    task = progress.add_task(f"uploading {path.name}", total=total)
    with progress if shown else nullcontext():
        if total <= part_size:
            with open(path, "rb") as f:
                reading = _Reading(f, lambda done: progress.update(task, completed=done))
                return c.files.create(file=(path.name, reading), purpose=purpose)  # type: ignore[arg-type]
        upload = c.uploads.create(
            bytes=total,
            filename=path.name,
            mime_type=MIME_TYPES.get(path.suffix.lower(), "application/octet-stream"),
            purpose=purpose,  # type: ignore[arg-type]
        )
        try:
            part_ids, md5 = [], hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as f:
                while chunk := f.read(part_size):
                    md5.update(chunk)
                    part_ids.append(c.uploads.parts.create(upload.id, data=chunk).id)
                    progress.update(task, advance=len(chunk))
            done = c.uploads.complete(upload.id, part_ids=part_ids, md5=md5.hexdigest())
        except BaseException:
            with suppress(Exception):  # the parts stored so far are of no use; the first error is the one to tell
                c.uploads.cancel(upload.id)
            raise
    assert done.file is not None, done
    return done.file


def validation_report(base_url: str, api_key: str, file_id: str) -> dict[str, Any] | None:
    """The file's validation report (Tunery's extension) if the server made one: none for a file it does not
    validate, or while the report is pending."""
    r = api_request("GET", base_url, api_key, f"/files/{file_id}/validation")
    if r.status_code != 200:
        return None
    report: dict[str, Any] = r.json()
    return report if "examples" in report else None


def _summary(f: FileObject) -> str:
    details = f" ({f.status_details})" if getattr(f, "status_details", None) else ""
    return f"{f.id}: {f.filename}, {size(f.bytes)}, {f.purpose}, {f.status}{details}"


@files_app.command("upload")
@api_command
def files_upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="The file to upload."),
    purpose: str = typer.Option("fine-tune", "--purpose", help="fine-tune, batch, user_data, evals, ..."),
    wait: bool = typer.Option(
        False, "--wait", help="Wait for the server to validate it (a training file); show the report's summary."
    ),
    part_size: int = typer.Option(
        PART_SIZE, "--part-size", min=1, help="A file larger than this goes in parts of this size (the Uploads API)."
    ),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Upload a file; print its id (with --json, the file object). With --wait, a file the server rejects as
    training data exits 1."""
    c = client(base_url, api_key)
    f = upload_file(c, path, purpose, part_size)
    if wait:
        f = c.files.wait_for_processing(f.id, poll_interval=0.5)
    if as_json:
        print_json(f)
    else:
        typer.echo(f.id)
        stderr().print(_summary(f))
        report = validation_report(base_url, api_key, f.id) if wait else None
        if report:
            from api.cli.views import print_validation

            print_validation(stderr(), report, path.name)
    if wait and f.status == "error":
        raise typer.Exit(1)


@files_app.command("list")
@api_command
def files_list(
    purpose: str = typer.Option(None, "--purpose", help="Only the files of this purpose."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many (newest first)."),
    after: str = typer.Option(None, "--after", help="The page after this file id."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """The project's files, newest first: id, name, purpose, size, status, age."""
    options: dict[str, Any] = {"limit": limit}
    if purpose:
        options["purpose"] = purpose
    if after:
        options["after"] = after
    page = client(base_url, api_key).files.list(**options)
    if as_json:
        print_json(page)
        return
    rows = [(f.id, f.filename, f.purpose, size(f.bytes), f.status, age(f.created_at)) for f in page.data]
    table(("id", "filename", "purpose", "size", "status", "age"), rows)
    if page.has_more and page.data:
        stderr().print(f"more: --after {page.data[-1].id}")


@files_app.command("get")
@api_command
def files_get(
    file_id: str = typer.Argument(..., help="The file (file-...)."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """A file: its fields and, for a training file the server validated, its validation report's summary
    (format, counts, tokens, invalid lines, warnings)."""
    f = client(base_url, api_key).files.retrieve(file_id)
    if as_json:
        print_json(f)
        return
    fields(
        [
            ("id", f.id),
            ("filename", f.filename),
            ("purpose", f.purpose),
            ("bytes", f"{f.bytes} ({size(f.bytes)})"),
            ("status", f.status),
            ("details", getattr(f, "status_details", None)),
            ("created", when(f.created_at)),
            ("expires", when(getattr(f, "expires_at", None))),
        ]
    )
    report = validation_report(base_url, api_key, f.id)
    if report:
        stdout().print()
        from api.cli.views import print_validation

        print_validation(stdout(), report, f.filename)


@files_app.command("delete")
@api_command
def files_delete(
    file_id: str = typer.Argument(..., help="The file (file-...)."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Delete a file (a file a job still needs is refused by the server)."""
    deleted = client(base_url, api_key).files.delete(file_id)
    if as_json:
        print_json(deleted)
    else:
        typer.echo(f"deleted {deleted.id}")
