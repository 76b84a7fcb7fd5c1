"""The ``tunery`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from api.cli_evals import evals_app

if TYPE_CHECKING:
    from tunery.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tunery: fine-tuning as a service.")
db_app = typer.Typer(no_args_is_help=True, help="Metadata store schema.")
models_app = typer.Typer(no_args_is_help=True, help="Base models; fine-tuned models to take home.")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Training data.")
app.add_typer(data_app, name="data")
admin_app = typer.Typer(no_args_is_help=True, help="Organization, projects and API keys (docs/tenancy.md).")
app.add_typer(admin_app, name="admin")
jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs, through a running server's API.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(evals_app, name="evals")
aliases_app = typer.Typer(no_args_is_help=True, help="A project's model aliases (docs/aliases.md).")
app.add_typer(aliases_app, name="aliases")


def _settings(**overrides: Any) -> Settings:
    from tunery.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
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
        run(_settings(host=host, port=port, data_dir=data_dir), role=role)
    except ObjectStoreError as e:  # a missing bucket or wrong credentials: say so, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except (SchemaOutOfDate, UnsafeSettings) as e:  # e.g. --role api without TUNERY_API_KEYS
        typer.echo(f"tunery serve: {e}", err=True)
        raise typer.Exit(2) from None


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
    typer.echo(f"schema at revision {database.current_revision()} ({database.display_url()})")
    database.engine.dispose()


@models_app.command("prepare")
def models_prepare() -> None:
    """Convert the SmolLM2 demo model to safetensors in the model cache (done by `serve` when missing)."""
    from api.server import prepare_base_models

    s = _settings()
    prepare_base_models(s)
    typer.echo(str(s.demo_model_dir))


@models_app.command("list")
def models_list() -> None:
    """Configured base models and their folders."""
    for name, path in _settings().base_model_paths().items():
        typer.echo(f"{name}\t{path}")


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
        bases = _settings().base_model_paths()
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
    from rich.table import Table

    from scheduler.validation import file_report
    from tunery.filescan import ScanOptions, scan_path

    s = _settings()
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
        console = Console()
        ok = report["status"] == "processed"
        console.print(
            f"[bold]{path}[/]: [{'green' if ok else 'red'}]{'valid' if ok else 'invalid'}[/] - "
            f"{report['examples']} example(s), {report['messages']} message(s) in {report['lines']} line(s), "
            f"format {report['format']}"
        )
        tokens = report["tokens"]
        if tokens:
            table = Table("", "min", "mean", "p50", "p95", "max", "total", title=f"Tokens ({tokens['model']})")
            for label, key, total in (
                ("per example", "per_example", tokens["total"]),
                ("trained", "trained_per_example", tokens["trained"]),
            ):
                st = tokens[key]
                table.add_row(label, *(str(st[k]) for k in ("min", "mean", "p50", "p95", "max")), str(total))
            console.print(table)
        if report["errors"]["total"]:
            table = Table("line", "field", "problem", title=f"{report['errors']['total']} invalid line(s)")
            for e in report["errors"]["listed"]:
                table.add_row(str(e["line"]), e["field"] or "", e["message"])
            console.print(table)
        for w in report["warnings"]:
            console.print(f"[yellow]warning:[/] {w}")
    raise typer.Exit(0 if report["status"] == "processed" else 1)


def _admin_database(s: Settings):  # type: ignore[no-untyped-def]
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


def _expiry(days: int | None) -> int | None:
    from tunery.db.ops import now

    return None if days is None else now() + days * 86400


@admin_app.command("bootstrap")
def admin_bootstrap(
    project: str = typer.Option(..., "--project", help="Name of the project to create (kept if one has it)."),
    expires_days: int = typer.Option(None, "--expires-days", min=1, help="The key expires after this many days."),
) -> None:
    """Create the default organization and project rows if missing, a project, and an owner service account; print
    its API key (on stdout, alone, and only this once)."""
    from sqlalchemy import select

    from tunery import tenancy
    from tunery.audit import CLI
    from tunery.db import Project

    s = _settings()
    database = _admin_database(s)
    with database.session() as session:
        found = session.scalar(
            select(Project).where(
                Project.organization_id == s.organization_id, Project.name == project, Project.archived_at.is_(None)
            )
        )
        row = found or tenancy.create_project(session, CLI, s.organization_id, project)
        account, key = tenancy.create_service_account(
            session, CLI, row, name=f"{project} owner", role="owner", expires_at=_expiry(expires_days)
        )
        typer.echo(f"project {row.id} ({row.name}){' (existing)' if found else ''}", err=True)
        typer.echo(f"service account {account.id} (owner), API key {key.row.id}: shown once, keep it", err=True)
        typer.echo(key.value)
    database.engine.dispose()


@admin_app.command("create-key")
def admin_create_key(
    project: str = typer.Option(None, "--project", help="Project id (not for --role admin)."),
    role: str = typer.Option(..., "--role", help="owner, member, reader (of the project) or admin (organization)."),
    name: str = typer.Option("", "--name", help="The key's name (default: the role)."),
    expires_days: int = typer.Option(None, "--expires-days", min=1, help="The key expires after this many days."),
) -> None:
    """Make an API key and print it (on stdout, alone, and only this once). A project key comes with a service
    account of its own."""
    from sqlalchemy import select

    from tunery import tenancy
    from tunery.audit import CLI
    from tunery.db import Project
    from tunery.db.models import ADMIN_ROLE, PROJECT_ROLES

    if role not in (*PROJECT_ROLES, ADMIN_ROLE):
        raise typer.BadParameter(f"one of {', '.join((*PROJECT_ROLES, ADMIN_ROLE))}", param_hint="--role")
    if (role == ADMIN_ROLE) == bool(project):
        raise typer.BadParameter("a project key needs --project; an admin key takes none", param_hint="--project")
    s = _settings()
    database = _admin_database(s)
    with database.session() as session:
        if role == ADMIN_ROLE:
            key = tenancy.issue_key(
                session,
                CLI,
                organization_id=s.organization_id,
                project_id=None,
                role=role,
                name=name or "admin",
                expires_at=_expiry(expires_days),
            )
        else:
            row = session.scalar(
                select(Project).where(Project.id == project, Project.organization_id == s.organization_id)
            )
            if row is None or row.archived_at is not None:
                typer.echo(f"tunery admin: no active project {project!r} (tunery admin list-keys)", err=True)
                raise typer.Exit(2)
            _, key = tenancy.create_service_account(
                session, CLI, row, name=name or role, role=role, expires_at=_expiry(expires_days)
            )
        typer.echo(f"API key {key.row.id} ({role}): shown once, keep it", err=True)
        typer.echo(key.value)
    database.engine.dispose()


@admin_app.command("list-keys")
def admin_list_keys(
    project: str = typer.Option(None, "--project", help="Only this project's keys."),
) -> None:
    """The organization's keys that are not revoked, redacted: id, project, role, name, value, expiry."""
    import time

    from tunery import tenancy
    from tunery.db import ApiKey

    s = _settings()
    database = _admin_database(s)
    with database.session() as session:
        rows = session.scalars(tenancy.live_keys(s.organization_id, project).order_by(ApiKey.pk))
        for k in rows:
            expired = k.expires_at is not None and k.expires_at <= time.time()
            expiry = "never" if k.expires_at is None else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(k.expires_at))
            fields = (k.id, k.project_id or "(organization)", k.role, k.name, k.redacted_value, expiry)
            typer.echo("\t".join(fields) + ("\texpired" if expired else ""))
    database.engine.dispose()


@admin_app.command("revoke-key")
def admin_revoke_key(key_id: str = typer.Argument(..., help="The key's id (key_...).")) -> None:
    """Revoke a key: its next request is a 401."""
    from tunery import tenancy
    from tunery.audit import CLI
    from tunery.db import ApiKey

    s = _settings()
    database = _admin_database(s)
    with database.session() as session:
        row = session.scalar(tenancy.live_keys(s.organization_id).where(ApiKey.id == key_id))
        if row is None:
            typer.echo(f"tunery admin: no key {key_id!r}", err=True)
            raise typer.Exit(2)
        tenancy.revoke(session, CLI, row)
    database.engine.dispose()
    typer.echo(f"revoked {key_id}", err=True)


@admin_app.command("audit")
def admin_audit(
    limit: int = typer.Option(20, "--limit", min=1, help="How many events (newest first)."),
    type: list[str] = typer.Option(None, "--type", help="Only events of this type (repeatable): project.created, ..."),
    project: list[str] = typer.Option(None, "--project", help="Only events of this project (repeatable)."),
) -> None:
    """The organization's audit log, newest first: time, type, actor, project, object (docs/tenancy.md)."""
    import time

    from api.services.audit import AuditLogQuery, AuditLogService

    s = _settings()
    database = _admin_database(s)
    query = AuditLogQuery(event_types=tuple(type or ()), project_ids=tuple(project or ()), limit=limit)
    for e in AuditLogService(database, s.organization_id).list(query).data:
        actor = e.actor.type if e.actor.api_key is None else e.actor.api_key.id
        if e.actor.api_key is not None and e.actor.api_key.service_account is not None:
            actor += f" ({e.actor.api_key.service_account.id})"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.effective_at))
        project_id = e.project.id if e.project is not None else "(organization)"
        resource = (e.model_extra or {}).get(e.type, {}).get("id", "")
        typer.echo("\t".join((at, e.type, actor, project_id, resource, e.id)))
    database.engine.dispose()


@jobs_app.command("report")
def jobs_report(
    job_id: str = typer.Argument(..., help="The job (ftjob-...)."),
    checkpoint: str = typer.Option(
        None, "--checkpoint", help="A checkpoint's report (ftckpt_...) instead of the job's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report's JSON."),
    base_url: str = typer.Option(
        "http://127.0.0.1:8000/v1", envvar="OPENAI_BASE_URL", help="The API (OPENAI_BASE_URL)."
    ),
    api_key: str = typer.Option("tunery", envvar="OPENAI_API_KEY", help="An API key (OPENAI_API_KEY)."),
) -> None:
    """A job's eval report (or one checkpoint's): validation loss against the base, forgetting, samples, the gate
    (docs/evals.md)."""
    import httpx

    from api.report_view import print_report
    from tunery.evalreport import EvalReport

    path = f"/fine_tuning/jobs/{job_id}" + (f"/checkpoints/{checkpoint}" if checkpoint else "") + "/eval_report"
    try:
        r = httpx.get(base_url.rstrip("/") + path, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
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
    if as_json:
        typer.echo(r.text)
        return
    print_report(EvalReport.model_validate(r.json()))


# ---- tunery aliases: the alias service of the API, on the metadata store, as `tunery admin` is ----------------------
_PROJECT = typer.Option(None, "--project", help="The project's id (default: TUNERY_PROJECT_ID).")
_NOTE = typer.Option(None, "--note", help="Why: kept with the version.")


def _aliases(project: str | None, call: Any) -> Any:
    """``call(service)`` on an :class:`api.services.aliases.AliasService` of ``project``, acting as ``cli`` (the
    audit log's actor); a refusal is printed as the API words it, with exit code 1."""
    from api.context import AppContext, Tenant
    from api.errors import ServiceError
    from api.services.aliases import AliasService
    from tunery.audit import CLI
    from tunery.storage import open_store

    s = _settings()
    database = _admin_database(s)
    ctx = AppContext(settings=s, db=database, store=open_store(s.resolved_object_store, s))
    try:
        return call(AliasService(ctx, Tenant(s.organization_id, project or s.project_id), CLI))
    except ServiceError as e:
        typer.echo(f"tunery aliases: {e.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.engine.dispose()


def _at(t: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _print_alias(a: Any) -> None:
    typer.echo("\t".join((a.name, a.model, f"v{a.version}", _at(a.updated_at))))


@aliases_app.command("list")
def aliases_list(project: str = _PROJECT) -> None:
    """The project's aliases, newest first: name, model, version, last change."""
    from api.protocol.aliases import ListAliasesRequest

    for a in _aliases(project, lambda svc: svc.list(ListAliasesRequest(after=None, limit=10_000))).data:
        _print_alias(a)


@aliases_app.command("create")
def aliases_create(
    name: str = typer.Argument(..., help="The alias: lowercase letters, digits, '-', '_', '.'."),
    model: str = typer.Argument(..., help="The fine-tuned or checkpoint model it points at."),
    note: str = _NOTE,
    project: str = _PROJECT,
) -> None:
    """Create an alias (its version 1)."""
    from api.protocol.aliases import CreateAliasRequest

    _print_alias(_aliases(project, lambda svc: svc.create(CreateAliasRequest(name=name, model=model, note=note))))


@aliases_app.command("set")
def aliases_set(
    name: str = typer.Argument(..., help="The alias."),
    model: str = typer.Argument(..., help="The model it points at from now on."),
    note: str = _NOTE,
    project: str = _PROJECT,
) -> None:
    """Re-point an alias: a new version, effective at the next request."""
    from api.protocol.aliases import UpdateAliasRequest

    _print_alias(_aliases(project, lambda svc: svc.update(name, UpdateAliasRequest(model=model, note=note))))


@aliases_app.command("rollback")
def aliases_rollback(
    name: str = typer.Argument(..., help="The alias."),
    to_version: int = typer.Option(None, "--to-version", min=1, help="Point at this version's model again."),
    note: str = _NOTE,
    project: str = _PROJECT,
) -> None:
    """Point an alias at its previous model again (or at --to-version's): a new version."""
    from api.protocol.aliases import RollbackAliasRequest

    req = RollbackAliasRequest(to_version=to_version, note=note)
    _print_alias(_aliases(project, lambda svc: svc.rollback(name, req)))


@aliases_app.command("history")
def aliases_history(
    name: str = typer.Argument(..., help="The alias."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many versions (newest first)."),
    project: str = _PROJECT,
) -> None:
    """An alias's versions, newest first: version, action, time, actor, previous model, model, note."""
    from api.protocol.aliases import ListAliasVersionsRequest

    req = ListAliasVersionsRequest(after=None, limit=limit)
    for v in _aliases(project, lambda svc: svc.history(name, req)).data:
        actor = v.actor.id if v.actor.type == "api_key" else v.actor.type
        fields = (f"v{v.version}", v.action, _at(v.created_at), actor, v.previous_model or "-", v.model, v.note or "")
        typer.echo("\t".join(fields))


@aliases_app.command("delete")
def aliases_delete(name: str = typer.Argument(..., help="The alias."), project: str = _PROJECT) -> None:
    """Delete an alias and its versions."""
    _aliases(project, lambda svc: svc.delete(name))
    typer.echo(f"deleted {name}", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
