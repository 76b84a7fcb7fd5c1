"""``tunery admin``: organization, projects and API keys, on the metadata store (docs/tenancy.md)."""

from __future__ import annotations

import typer

from api.cli.common import admin_database, expiry, settings_of

admin_app = typer.Typer(no_args_is_help=True, help="Organization, projects and API keys (docs/tenancy.md).")


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

    s = settings_of()
    database = admin_database(s)
    with database.session() as session:
        found = session.scalar(
            select(Project).where(
                Project.organization_id == s.organization_id, Project.name == project, Project.archived_at.is_(None)
            )
        )
        row = found or tenancy.create_project(session, CLI, s.organization_id, project)
        account, key = tenancy.create_service_account(
            session, CLI, row, name=f"{project} owner", role="owner", expires_at=expiry(expires_days)
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
    s = settings_of()
    database = admin_database(s)
    with database.session() as session:
        if role == ADMIN_ROLE:
            key = tenancy.issue_key(
                session,
                CLI,
                organization_id=s.organization_id,
                project_id=None,
                role=role,
                name=name or "admin",
                expires_at=expiry(expires_days),
            )
        else:
            row = session.scalar(
                select(Project).where(Project.id == project, Project.organization_id == s.organization_id)
            )
            if row is None or row.archived_at is not None:
                typer.echo(f"tunery admin: no active project {project!r} (tunery admin list-keys)", err=True)
                raise typer.Exit(2)
            _, key = tenancy.create_service_account(
                session, CLI, row, name=name or role, role=role, expires_at=expiry(expires_days)
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

    s = settings_of()
    database = admin_database(s)
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

    s = settings_of()
    database = admin_database(s)
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

    s = settings_of()
    database = admin_database(s)
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
