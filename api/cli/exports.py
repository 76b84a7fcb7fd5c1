"""``tunery exports``: merged-model exports (docs/exports.md) through a running server's API (``OPENAI_BASE_URL`` with
``OPENAI_API_KEY``, as ``tunery evals``): start one, wait for it, download and unpack its result. The merge runs on
the server's trainer; ``tunery models export`` does the same on this machine."""

from __future__ import annotations

import base64
import os
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import typer

from api.cli.common import API_KEY, BASE_URL, DONE, api_call

exports_app = typer.Typer(
    no_args_is_help=True,
    help="Export a fine-tuned or checkpoint model merged into its base: safetensors or GGUF (docs/exports.md).",
)

PATH = "/tunery/exports"


def b64decode_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of a base64 stream (a fine-tune-results file's content), decoded as it comes."""
    carry = b""
    for chunk in chunks:
        data = carry + b"".join(chunk.split())
        whole = len(data) - len(data) % 4
        if whole:
            yield base64.b64decode(data[:whole], validate=True)
        carry = data[whole:]
    if carry:
        yield base64.b64decode(carry, validate=True)


def download_result(base_url: str, api_key: str, export: dict[str, Any], out: Path) -> Path:
    """The export's result file into ``out`` (a folder): a GGUF as its file, a safetensors archive unpacked (its one
    top folder, the merged model). Returns the GGUF or the model folder."""
    import httpx

    file_id = export["result_file"]
    filename = Path(api_call("GET", base_url, api_key, f"/files/{file_id}").json()["filename"]).name
    out.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/files/{file_id}/content"
    fd, tmp_name = tempfile.mkstemp(dir=out, prefix=f".{filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            httpx.stream(
                "GET", url, headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(60, read=600)
            ) as r,
        ):
            if r.status_code != 200:
                r.read()
                raise ValueError(f"HTTP {r.status_code}: {r.text[:200]}")
            for data in b64decode_stream(r.iter_bytes()):
                f.write(data)
        if export["format"] == "gguf":
            dest = out / filename
            os.replace(tmp, dest)
            return dest
        with tarfile.open(tmp, "r:gz") as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(tops) != 1:
                raise ValueError(f"the archive holds {len(tops)} top folders, not the model's one")
            tar.extractall(out, filter="data")
        return out / tops.pop()
    except (httpx.HTTPError, OSError, EOFError, ValueError, tarfile.TarError) as e:
        typer.echo(f"error: the download of {file_id} did not complete ({type(e).__name__}: {e})", err=True)
        raise typer.Exit(1) from None
    finally:
        tmp.unlink(missing_ok=True)


@exports_app.command("create")
def exports_create(
    model: str = typer.Argument(..., help="The model to export: ft:... or ft:...:ckpt-step-N."),
    format: str = typer.Option("safetensors", "--format", help="safetensors (a .tar.gz of the folder) or gguf."),
    dtype: str = typer.Option("float32", help="Precision of the merge and of the weights: float32, float16, bfloat16."),
    gguf_type: str = typer.Option(None, help="For --format gguf: f32, f16 (default) or q8_0."),
    wait: bool = typer.Option(False, "--wait", help="Wait for it to end; print its result file's id."),
    out: Path = typer.Option(
        None, "--out", "-o", help="With --wait: download the result here (a folder), the archive unpacked."
    ),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Start an export of MODEL merged into its base; print its id (with --wait, its result file's id; with --out
    too, where the merged model or the GGUF was written)."""
    body: dict[str, Any] = {"model": model, "format": format, "dtype": dtype}
    if gguf_type is not None:
        body["gguf_type"] = gguf_type
    export = api_call("POST", base_url, api_key, PATH, body).json()
    if not wait:
        if out is not None:
            typer.echo("error: --out needs --wait", err=True)
            raise typer.Exit(2)
        typer.echo(export["id"])
        return
    while export["status"] not in DONE:
        time.sleep(1.0)
        export = api_call("GET", base_url, api_key, f"{PATH}/{export['id']}").json()
    if export["status"] != "succeeded":
        error = export.get("error") or {}
        typer.echo(f"error: {export['id']} {export['status']}: {error.get('message', '')}", err=True)
        raise typer.Exit(1)
    typer.echo(export["result_file"] if out is None else str(download_result(base_url, api_key, export, out)))


@exports_app.command("get")
def exports_get(
    export_id: str = typer.Argument(..., help="The export (exportjob-...)."),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """An export's JSON: its status, its error, its result file."""
    typer.echo(api_call("GET", base_url, api_key, f"{PATH}/{export_id}").text)


@exports_app.command("list")
def exports_list(
    limit: int = typer.Option(20, help="How many, newest first."),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """The project's exports, newest first: id, status, format, model, result file."""
    for e in api_call("GET", base_url, api_key, f"{PATH}?limit={limit}").json()["data"]:
        typer.echo(f"{e['id']}  {e['status']:<16} {e['format']:<11} {e['model']}  {e['result_file'] or '-'}")


@exports_app.command("cancel")
def exports_cancel(
    export_id: str = typer.Argument(..., help="The export (exportjob-...)."),
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Cancel an export that has not ended."""
    typer.echo(api_call("POST", base_url, api_key, f"{PATH}/{export_id}/cancel").json()["status"])
