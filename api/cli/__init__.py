"""The ``tunery`` command: one module per command group (``tunery serve``, ``tunery models``, ...)."""

from __future__ import annotations

import typer

from api.cli.admin import admin_app
from api.cli.aliases import aliases_app
from api.cli.chat import chat
from api.cli.data import data_app
from api.cli.evals import evals_app
from api.cli.exports import exports_app
from api.cli.files import files_app
from api.cli.jobs import jobs_app
from api.cli.models import models_app
from api.cli.server import db_app, demo, serve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tunery: fine-tuning as a service.")
app.command()(serve)
app.command()(demo)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(admin_app, name="admin")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(evals_app, name="evals")
app.add_typer(exports_app, name="exports")
app.add_typer(aliases_app, name="aliases")
app.command()(chat)


def main() -> None:
    app()
