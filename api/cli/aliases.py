"""``tunery aliases``: a project's model aliases (docs/aliases.md), through the API's alias service on the metadata
store, as ``tunery admin`` is."""

from __future__ import annotations

from typing import Any

import typer

from api.cli.common import admin_database, settings_of

_PROJECT = typer.Option(None, "--project", help="The project's id (default: TUNERY_PROJECT_ID).")
_NOTE = typer.Option(None, "--note", help="Why: kept with the version.")
aliases_app = typer.Typer(no_args_is_help=True, help="A project's model aliases (docs/aliases.md).")


def _aliases(project: str | None, call: Any) -> Any:
    """``call(service)`` on an :class:`api.services.aliases.AliasService` of ``project``, acting as ``cli`` (the
    audit log's actor); a refusal is printed as the API words it, with exit code 1."""
    from api.context import AppContext, Tenant
    from api.errors import ServiceError
    from api.services.aliases import AliasService
    from tunery.audit import CLI
    from tunery.storage import open_store

    s = settings_of()
    database = admin_database(s)
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
