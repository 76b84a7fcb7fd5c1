"""``tunery models``: the server's models (base, fine-tuned, checkpoints: list, get, delete, through its API); this
machine's base models (prepare, ``list --local``); fine-tuned models to take home (download, export merged)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from api.cli.common import API_KEY, BASE_URL, JSON_OUT, api_command, client, print_json, settings_of, table, when

models_app = typer.Typer(
    no_args_is_help=True, help="The server's models (base, fine-tuned, checkpoints); fine-tuned models to take home."
)


def model_kind(model_id: str) -> str:
    """``base``, ``fine-tuned`` or ``checkpoint``, from the model's name (``ft:...``, ``ft:...:ckpt-step-N``)."""
    if not model_id.startswith("ft:"):
        return "base"
    return "checkpoint" if ":ckpt-step-" in model_id else "fine-tuned"


@models_app.command("prepare")
def models_prepare() -> None:
    """Convert the SmolLM2 demo model to safetensors in the model cache (done by `serve` when missing)."""
    from api.server import prepare_base_models

    s = settings_of()
    prepare_base_models(s)
    typer.echo(str(s.demo_model_dir))


@models_app.command("list")
@api_command
def models_list(
    local: bool = typer.Option(
        False, "--local", help="This machine's configured base models and their folders instead (no server)."
    ),
    kind: str = typer.Option(None, "--kind", help="Only these: base, fine-tuned or checkpoint."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """The models the server offers the key's project: base models, its fine-tuned models and their checkpoints,
    and the models other projects shared with it. With --local: the base models configured on this machine
    (name, folder; TUNERY_BASE_MODELS and the demo model)."""
    if local:
        for name, path in settings_of().base_model_paths().items():
            typer.echo(f"{name}\t{path}")
        return
    if kind is not None and kind not in ("base", "fine-tuned", "checkpoint"):
        raise typer.BadParameter("base, fine-tuned or checkpoint", param_hint="--kind")
    page = client(base_url, api_key).models.list()
    if kind is not None:
        page.data = [m for m in page.data if model_kind(m.id) == kind]
    if as_json:
        print_json(page)
        return
    rows = [(m.id, model_kind(m.id), m.owned_by, when(m.created)) for m in page.data]
    table(("id", "kind", "owned by", "created"), rows)


@models_app.command("get")
@api_command
def models_get(
    model: str = typer.Argument(..., help="A base, fine-tuned (ft:...) or checkpoint model."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """One model: its id, kind, owner, creation time."""
    m = client(base_url, api_key).models.retrieve(model)
    if as_json:
        print_json(m)
        return
    table(("id", "kind", "owned by", "created"), [(m.id, model_kind(m.id), m.owned_by, when(m.created))])


@models_app.command("delete")
@api_command
def models_delete(
    model: str = typer.Argument(..., help="A fine-tuned model of the project (ft:...)."),
    as_json: bool = JSON_OUT,
    base_url: str = BASE_URL,
    api_key: str = API_KEY,
) -> None:
    """Delete a fine-tuned model (owners; the server refuses one an alias points at)."""
    deleted = client(base_url, api_key).models.delete(model)
    if as_json:
        print_json(deleted)
    else:
        typer.echo(f"deleted {deleted.id}")


@models_app.command("download")
def models_download(
    model: str = typer.Argument(..., help="A fine-tuned or checkpoint model (ft:...)."),
    output: Path = typer.Option(
        None, "-o", "--output", help="Where to write the .tar.gz (default: ./<model, safe characters>.tar.gz)."
    ),
    base_url: str = typer.Option(
        "http://127.0.0.1:8000/v1", envvar="OPENAI_BASE_URL", help="The Tunery server's /v1 URL (OPENAI_BASE_URL)."
    ),
    api_key: str = typer.Option(
        "", envvar="OPENAI_API_KEY", show_default=False, help="An API key of the project (OPENAI_API_KEY)."
    ),
) -> None:
    """Download a fine-tuned model as its folder (.tar.gz: the adapter or whole model, tokenizer, chat template,
    manifest, eval report), check every file against the manifest's SHA-256, and print where it was saved."""
    import os
    import tarfile

    import httpx

    from tunery.archive import safe_name, verify_archive

    dest = output or Path(f"{safe_name(model)}.tar.gz")
    part = dest.with_name(f".{dest.name}.part")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{base_url.rstrip('/')}/tunery/models/{model}/archive"
    try:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60, read=600)) as r:
            if r.status_code != 200:
                r.read()
                try:
                    message = r.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = f"HTTP {r.status_code}: {r.text[:200]}"
                typer.echo(f"tunery models download: {message}", err=True)
                raise typer.Exit(1)
            with open(part, "wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
        problems = verify_archive(str(part))
    except (httpx.HTTPError, OSError, EOFError, ValueError, tarfile.TarError) as e:  # a broken stream or archive
        part.unlink(missing_ok=True)
        typer.echo(f"tunery models download: the download did not complete ({type(e).__name__}: {e})", err=True)
        raise typer.Exit(1) from None
    if problems:
        part.unlink(missing_ok=True)
        typer.echo(f"tunery models download: the archive does not match its manifest: {'; '.join(problems)}", err=True)
        raise typer.Exit(1)
    os.replace(part, dest)
    typer.echo(str(dest))


@models_app.command("export")
def models_export(
    archive: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="A model's archive, as `tunery models download` saves it (.tar.gz)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The folder to write the merged model to (safetensors)."),
    base: str = typer.Option(
        "",
        help="The base model: a folder, or a base model's name in TUNERY_BASE_MODELS or the demo model (default: "
        "the base the adapter names, when this machine has it). A full fine-tune needs none.",
    ),
    dtype: str = typer.Option("float32", help="Precision of the merge and of the written weights."),
    gguf: Path = typer.Option(None, help="Also write one GGUF file here, for llama.cpp and Ollama (Llama models)."),
    gguf_type: str = typer.Option("f16", help="The GGUF's weights: f32, f16 or q8_0."),
) -> None:
    """Take the model home as a plain model: the downloaded adapter merged into its base model (a standalone
    safetensors folder any `from_pretrained` loads without PEFT), and optionally one GGUF file. Runs here, on this
    machine's CPU (it needs the `trainer` extra: torch, transformers, PEFT)."""
    import json
    import tarfile
    import tempfile

    from tunery.archive import verify_archive

    def fail(message: str) -> NoReturn:
        typer.echo(f"tunery models export: {message}", err=True)
        raise typer.Exit(1)

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        fail(f"{out} exists and is not a model folder: it would be replaced whole; choose another --out")
    try:
        problems = verify_archive(str(archive))
    except (OSError, EOFError, ValueError, tarfile.TarError) as e:
        fail(f"{archive} is not a model archive ({type(e).__name__}: {e})")
    if problems:
        fail(f"the archive does not match its manifest: {'; '.join(problems)}")
    try:
        from trainer.errors import TrainerError
        from trainer.export import merge_model, write_gguf
    except ImportError as e:
        fail(f"exporting needs the trainer's libraries (pip install 'tunery[trainer]'): {e}")
    with tempfile.TemporaryDirectory(prefix="tunery-export-") as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        (folder,) = [p for p in Path(tmp).iterdir() if p.is_dir()]  # the archive's one top folder
        adapter = folder / "adapter_config.json"
        named = json.loads(adapter.read_text()).get("base_model_name_or_path", "") if adapter.is_file() else ""
        wanted = base or named
        bases = settings_of().base_model_paths()
        base_dir = Path(bases.get(wanted, wanted)) if wanted else None
        if adapter.is_file() and not (base_dir and (base_dir / "config.json").is_file()):
            fail(
                f"the adapter's base model {wanted!r} is not on this machine: give its folder with --base "
                f"(configured here: {', '.join(bases) or 'none'})"
            )
        try:
            merged = merge_model(base_dir or folder, folder, out, dtype)
            typer.echo(str(merged))
            if gguf is not None:
                typer.echo(str(write_gguf(merged, gguf, gguf_type)))
        except TrainerError as e:
            fail(f"{e.message} ({e.code})")
