"""Experiment trackers a fine-tuning job logs its run to (docs/integrations.md): OpenAI's Weights & Biases integration
(``{"type": "wandb", "wandb": {...}}``) and Tunery's MLflow one (``{"type": "mlflow", "mlflow": {...}}``), both in
the job's ``integrations``.

The one home of their rules: the limits of a request (OpenAI's: at most 5 integrations, 50 tags of 64 characters),
the per-project secrets each one reads (:class:`SecretName`: the values live in the metadata store, set by a
project's owner through ``/v1/tunery/secrets``, and reach the job's trainer alone through its backend, never the job
object or the JobSpec in the shared object store), the tracking URIs an MLflow integration may name (SSRF: the rule
of webhook URLs, :func:`tunery.webhooks.check_url`), and what the trainer gets in its JobSpec
(:class:`IntegrationsSpec`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # the trainer reads its spec's part of this module: no metadata store there
    from sqlalchemy.orm import Session

    from tunery.db.models import Job

TYPES = ("wandb", "mlflow")
MAX_INTEGRATIONS = 5  # OpenAI's maxItems
MAX_TAGS = 50  # OpenAI's guide: at most 50 tags ...
MAX_TAG_LENGTH = 64  # ... of at most 64 characters each
MAX_NAME_LENGTH = 128  # a W&B project, entity or run name; an MLflow experiment or run name
MAX_URI_LENGTH = 2048
# Characters W&B refuses in a project or entity name.
WANDB_FORBIDDEN = frozenset("/\\#?%:")
# The tags Tunery adds to every W&B run, as OpenAI adds ``openai/finetune``, ``openai/{model}``, ``openai/{job}``.
TAG_PREFIX = "tunery/"

WandbMode = Literal["online", "offline"]


class SecretName(enum.StrEnum):
    """The per-project secrets Tunery knows, by the environment variable the trainer gets each one as."""

    WANDB_API_KEY = "WANDB_API_KEY"
    MLFLOW_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
    MLFLOW_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
    MLFLOW_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"


MAX_SECRET_LENGTH = 4096
# The secrets a trainer of a job with each integration is handed (those the project has).
SECRETS_OF: dict[str, tuple[SecretName, ...]] = {
    "wandb": (SecretName.WANDB_API_KEY,),
    "mlflow": (
        SecretName.MLFLOW_TRACKING_TOKEN,
        SecretName.MLFLOW_TRACKING_USERNAME,
        SecretName.MLFLOW_TRACKING_PASSWORD,
    ),
}


def secrets_needed(integrations: list[dict[str, Any]] | None) -> set[str]:
    """The names of the secrets a run of a job with these (stored) integrations is handed."""
    return {name.value for i in integrations or () for name in SECRETS_OF.get(str(i.get("type")), ())}


def project_secret_names(s: Session, organization_id: str, project_id: str) -> set[str]:
    """The names of the secrets a project has."""
    from sqlalchemy import select

    from tunery.db.models import ProjectSecret

    rows = s.scalars(
        select(ProjectSecret.name).where(
            ProjectSecret.organization_id == organization_id, ProjectSecret.project_id == project_id
        )
    )
    return set(rows)


def run_secrets(s: Session, job: Job) -> dict[str, str]:
    """The secrets the run of ``job`` is handed (by its backend, as environment variables of its trainer alone): its
    project's values of those its integrations read."""
    from sqlalchemy import select

    from tunery.db.models import ProjectSecret

    names = secrets_needed(job.integrations)
    if not names:
        return {}
    rows = s.scalars(
        select(ProjectSecret).where(
            ProjectSecret.organization_id == job.organization_id,
            ProjectSecret.project_id == job.project_id,
            ProjectSecret.name.in_(sorted(names)),
        )
    )
    return {row.name: row.value for row in rows}


class IntegrationError(ValueError):
    """An integration a job may not have: the message for the client, and the field it names."""

    def __init__(self, message: str, param: str, code: str = "invalid_integration"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def check_wandb_name(value: str | None, param: str) -> None:
    """A W&B project or entity name: no character W&B refuses there."""
    if value is not None and WANDB_FORBIDDEN & set(value):
        bad = "".join(sorted(WANDB_FORBIDDEN & set(value)))
        raise IntegrationError(f"'{param}' may not contain the characters {bad!r}.", param)


def check_tracking_uri(uri: str, param: str, allow_private: bool) -> None:
    """An MLflow tracking URI a trainer may log to: an http(s) URL of a server (no ``file:``, ``databricks`` or
    database URI: the trainer logs to a tracking server), no credentials in it (the job object echoes it: they
    belong in the project's MLFLOW_TRACKING_* secrets), resolving only to public addresses unless
    ``allow_private`` (TUNERY_INTEGRATIONS_ALLOW_PRIVATE): the rule of webhook URLs, since the trainer sends
    requests wherever it points."""
    from tunery.webhooks import RefusedURL, check_url

    try:
        check_url(uri, allow_private, what="an MLflow tracking URI", setting="TUNERY_INTEGRATIONS_ALLOW_PRIVATE")
    except RefusedURL as e:
        raise IntegrationError(str(e), param) from None


def default_tags(base_model: str, job_id: str) -> list[str]:
    """The tags Tunery adds to a job's W&B run (each cut to W&B's 64 characters)."""
    return [t[:MAX_TAG_LENGTH] for t in (f"{TAG_PREFIX}finetune", f"{TAG_PREFIX}{base_model}", f"{TAG_PREFIX}{job_id}")]


# ---- what the trainer gets (JobSpec.integrations) ------------------------------------------------------------------
class WandbSpec(BaseModel):
    """A W&B run: OpenAI's settings, the run id (the job's id, so a resumed run continues it), the mode and server
    (TUNERY_WANDB_MODE, TUNERY_WANDB_BASE_URL). The API key is not here: it is the trainer's WANDB_API_KEY."""

    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    run_id: str
    mode: WandbMode = "online"
    base_url: str | None = None


class MlflowSpec(BaseModel):
    """An MLflow run on a tracking server; its credentials, if any, are the trainer's MLFLOW_TRACKING_* variables."""

    tracking_uri: str
    experiment_name: str | None = None
    run_name: str | None = None
    allow_private: bool = False  # TUNERY_INTEGRATIONS_ALLOW_PRIVATE: the trainer checks the URI again before use


class IntegrationsSpec(BaseModel):
    """The trackers of one run (at most one of each type)."""

    wandb: WandbSpec | None = None
    mlflow: MlflowSpec | None = None


def integrations_spec(
    stored: list[dict[str, Any]] | None, *, wandb_mode: WandbMode, wandb_base_url: str, allow_private: bool
) -> IntegrationsSpec | None:
    """A job's stored integrations (as its object echoes them) as its run's spec; None when it has none."""
    out = IntegrationsSpec()
    for item in stored or ():
        if item.get("type") == "wandb":
            out.wandb = WandbSpec(**item["wandb"], mode=wandb_mode, base_url=wandb_base_url or None)
        elif item.get("type") == "mlflow":
            out.mlflow = MlflowSpec(**item["mlflow"], allow_private=allow_private)
    return out if out.wandb or out.mlflow else None
