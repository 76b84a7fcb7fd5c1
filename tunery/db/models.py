"""The metadata store's tables: one SQLAlchemy model for SQLite (embedded) and PostgreSQL (production).

Every row carries its organization and project from the first table on. Each table has an integer
surrogate key ``pk`` that orders rows by creation (lists, cursors), and the public string ``id``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tunery.jobstate import EVAL_FILE_PARAM, EVAL_GRADER_PARAM, MIX_PARAM, REFERENCE_PARAM, JobKind
from tunery.plan import PlanRequest, TrainingPlan

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant:
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)


# The purposes a client uploads a file with (OpenAI's), and the one of the results file a job writes.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
RESULTS_PURPOSE = "fine-tune-results"


class File(Base, Tenant):
    __tablename__ = "files"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    status_details: Mapped[str | None] = mapped_column(Text)
    # The scheduler replica validating the file and until when its claim holds (see Job.claimed_by).
    claimed_by: Mapped[str | None] = mapped_column(String(128), index=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger)


class Job(Base, Tenant):
    """A trainer run's job, of one :class:`tunery.jobstate.JobKind`. A fine-tuning job is OpenAI's; an evaluation
    (``kind`` evaluation, docs/evals.md) keeps in ``model`` the ``ft:`` model it evaluates (and in
    ``fine_tuned_model`` the same name), in ``training_file`` the file it scores, and in ``plan`` the plan of the job
    that made the model; it never makes a model. An export (``kind`` export, docs/exports.md) keeps in ``model`` the
    ``ft:`` model it merges, in ``tunery.export`` its options, and no file (``training_file`` is empty)."""

    __tablename__ = "jobs"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    # What the job's run does; each kind is its own resource at the API (only fine_tune jobs are OpenAI's).
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.fine_tune, server_default=JobKind.fine_tune.value)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(256))  # as requested
    base_model: Mapped[str] = mapped_column(String(256))  # resolved base model name
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    integrations: Mapped[list[Any] | None] = mapped_column(JSON)
    # Tunery's documented extensions of the job, by namespace (``{"tunery": {"data": {...}}}``); None when unused.
    extensions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    # The current trainer run: its token (checked on every report) and the backend's handle (pid, Job name).
    run_token: Mapped[str | None] = mapped_column(String(128))
    run_handle: Mapped[str | None] = mapped_column(String(256))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Pause/resume and crash-resume (docs/resilience.md): the current run must save its state and stop; and how
    # many times a run of the job was restarted after a crash (counted against TUNERY_MAX_RUN_RETRIES).
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    crash_restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The scheduler replica that owns the job's current phase (validating its files, or its run) and until when
    # that claim holds: the replica renews it while alive; another replica takes the job over once it lapses.
    claimed_by: Mapped[str | None] = mapped_column(String(128), index=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # The training plan resolved when the files were validated (tunery.plan.TrainingPlan), whole; None before.
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the job's trainer runs with on its backend (image, resources, ...), fixed when it is queued, so a change
    # of settings does not alter a queued or resumed job (scheduler.k8s.TrainerRuntime); None for the local runner.
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The highest step whose metrics were reported, across runs: a run resumed from an earlier checkpoint reports
    # the steps after it again, and those are not repeated in the job's events.
    reported_step: Mapped[int | None] = mapped_column(Integer)
    # Its rank among its project's queued jobs (Tunery's ``tunery.scheduling.priority``): higher launches first.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The eval report of the final model (tunery.evalreport.ReportSummary: its file id and figures), once written.
    eval_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Optimistic locking: a write based on a stale read (scheduler vs. cancel vs. trainer reports) fails
    # with StaleDataError and is retried on fresh state by Database.transaction().
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}

    def tunery_options(self, section: str) -> dict[str, Any]:
        """One section of the job's stored ``tunery`` extensions (``data``, ``training``): requested until the
        files are validated, resolved after; empty when the job has none."""
        return dict(((self.extensions or {}).get("tunery") or {}).get(section) or {})

    def evaluation_grader(self) -> dict[str, Any] | None:
        """The grader an evaluation was given (its ``grader``, also in its plan), or None: a fine-tuning job, an
        export, or an evaluation graded (if at all) by its model's job's grader."""
        if self.kind != JobKind.evaluation:
            return None
        return self.tunery_options(EVAL_GRADER_PARAM) or None

    def plan_request(self) -> PlanRequest:
        """The training plan the job asked for, from what it stores (``auto`` until its files are validated)."""
        return PlanRequest.from_job_fields(
            self.method,
            self.hyperparameters,
            self.tunery_options("training"),
            self.tunery_options("method").get("trainer"),
            self.tunery_options("reinforcement"),
        )

    def training_plan(self) -> TrainingPlan | None:
        """The resolved plan, once the job's files are validated."""
        return TrainingPlan.model_validate(self.plan) if self.plan else None

    def set_plan(self, plan: TrainingPlan) -> None:
        """Store the resolved plan, and its OpenAI view (``hyperparameters``, ``method``) and ``tunery.training``."""
        self.plan = plan.model_dump()
        self.hyperparameters = plan.openai_hyperparameters()
        self.method = plan.openai_method()
        tunery = {**((self.extensions or {}).get("tunery") or {}), "training": plan.training_options()}
        if plan.reinforcement is not None:
            tunery["reinforcement"] = plan.reinforcement.options()
        self.extensions = {**(self.extensions or {}), "tunery": tunery}  # a new dict: JSON is not tracked

    def input_files(self) -> list[tuple[str, str]]:
        """``(request parameter, file id)`` of every file the job reads: its training file, its validation file and
        the file of ``tunery.data.mix``; an evaluation's file as ``file``; none for an export."""
        if self.kind == JobKind.export:
            return []
        if self.kind == JobKind.evaluation:
            out = [(EVAL_FILE_PARAM, self.training_file)]
            reference = self.tunery_options("eval").get("reference_file")
            return out + ([(REFERENCE_PARAM, str(reference))] if reference else [])
        out = [("training_file", self.training_file)]
        if self.validation_file:
            out.append(("validation_file", self.validation_file))
        mix = self.tunery_options("data").get("mix")
        if mix and mix.get("file"):
            out.append((MIX_PARAM, str(mix["file"])))
        reference = self.tunery_options("eval").get("reference_file")
        if reference:
            out.append((REFERENCE_PARAM, str(reference)))
        return out


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_pk", "job_id", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_pk", "job_id", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(512))
    object_prefix: Mapped[str] = mapped_column(String(1024))
    # The checkpoint's eval report (tunery.evalreport.ReportSummary: its file id and figures), when it has one.
    eval_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class FineTunedModel(Base, Tenant):
    """A servable fine-tuned model or checkpoint model (an adapter in the object store)."""

    __tablename__ = "models"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(512), unique=True)  # ft:... name
    kind: Mapped[str] = mapped_column(String(16))  # fine_tuned | checkpoint
    base_model: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    object_prefix: Mapped[str] = mapped_column(String(1024))
    owned_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Upload(Base, Tenant):
    """A file sent in parts (``/v1/uploads``); on completion the parts become one File."""

    __tablename__ = "uploads"
    # The expiry sweep looks for pending uploads past their expiry: (status, expires_at) answers it alone.
    __table_args__ = (Index("ix_uploads_status_expires_at", "status", "expires_at"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)  # declared at creation; the parts must add up to it
    mime_type: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    # pending -> completing (transient, held by one complete request) -> completed; pending -> cancelled | expired.
    status: Mapped[str] = mapped_column(String(16))
    # expires_after of the request: the lifetime of the File made on completion (seconds), if any.
    file_expires_after: Mapped[int | None] = mapped_column(BigInteger)
    file_id: Mapped[str | None] = mapped_column(String(64))
    # While `completing`: when the complete request holding it last showed it is alive (it renews this while it
    # assembles the file). One silent for TUNERY_UPLOAD_COMPLETING_STALE_SECONDS died with its process: the upload
    # is given back (tunery/uploads.py). None on rows that were completing before this column existed.
    completing_at: Mapped[int | None] = mapped_column(BigInteger)


class UploadPart(Base, Tenant):
    __tablename__ = "upload_parts"
    __table_args__ = (Index("ix_upload_parts_upload_pk", "upload_id", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(1024))


# Tenancy (docs/tenancy.md) -------------------------------------------------------------------------------------------
# The roles a key carries: of a project (owner, member: read and write; reader: read only), or of the organization
# (admin: the administration API, and every project route on the default project).
PROJECT_ROLES = ("owner", "member", "reader")
ADMIN_ROLE = "admin"


class Organization(Base):
    __tablename__ = "organizations"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Project(Base):
    __tablename__ = "projects"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)
    archived_at: Mapped[int | None] = mapped_column(BigInteger)
    # The project's own limits (tunery/quotas.py); None: the TUNERY_PROJECT_* default, 0: unlimited.
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    gpu_quota: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)


class ServiceAccount(Base, Tenant):
    """A project's non-human member: it holds one API key, made with it."""

    __tablename__ = "service_accounts"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key, stored only as the SHA-256 of its value (looked up by it). ``project_id`` is None for an
    organization admin key. A revoked key keeps its row (``revoked_at``) so the store remembers that keys were
    issued: from the first key on, every request needs one."""

    __tablename__ = "api_keys"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), index=True)
    service_account_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    redacted_value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    # When a request last used the key, to the minute (written at most once a minute: tunery.tenancy.note_use).
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)


class StorageReservation(Base, Tenant):
    """Bytes a ``POST /v1/files`` holds against its project's stored-bytes quota while it stores the file: made
    before the first byte is stored, deleted with the file's row written (or on failure). One left by a killed
    process stops counting at ``expires_at``."""

    __tablename__ = "storage_reservations"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)


class CheckpointPermission(Base, Tenant):
    """A fine-tuned or checkpoint model of one project (``organization_id``/``project_id``: the owner's) shared with
    another project of its organization (``grantee_project_id``), which may then chat with it and fine-tune from it
    (OpenAI's ``checkpoint.permission``; tunery/sharing.py decides what a project may use)."""

    __tablename__ = "checkpoint_permissions"
    __table_args__ = (UniqueConstraint("model_id", "grantee_project_id", name="uq_checkpoint_permissions_grantee"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[str] = mapped_column(String(512), index=True)
    grantee_project_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class AuditEvent(Base):
    """One event of an organization's audit log (tunery/audit.py): who (``actor_*``) did what (``type``) to which
    object (``resource_id``), when, in which project (None for an organization-wide one such as an admin key)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_organization_effective_at", "organization_id", "effective_at"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    effective_at: Mapped[int] = mapped_column(BigInteger)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_service_account_id: Mapped[str | None] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(512))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelAlias(Base, Tenant):
    """A stable name of a project (``support-bot``) for one of the fine-tuned or checkpoint models it may use
    (api/services/aliases.py). ``version`` counts its versions (1 at creation, one more per re-point or rollback) and
    is the row's optimistic lock: two re-points at once cannot both become version n+1."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_model_aliases_project_name"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(512), index=True)  # the current target, an ft:... name
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class ModelAliasVersion(Base):
    """One version of an alias: what it pointed at before (``from_model``, None at creation) and from then on
    (``to_model``), how (``action``: created, updated, rolled_back), who (the audit log's actor), when, and a note."""

    __tablename__ = "model_alias_versions"
    __table_args__ = (
        UniqueConstraint("alias_id", "version", name="uq_model_alias_versions_alias_version"),
        Index("ix_model_alias_versions_alias_pk", "alias_id", "pk"),
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    alias_id: Mapped[str] = mapped_column(ForeignKey("model_aliases.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    from_model: Mapped[str | None] = mapped_column(String(512))
    to_model: Mapped[str] = mapped_column(String(512))
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_service_account_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(Text)


class WebhookEndpoint(Base, Tenant):
    """Where a project's webhook events go (tunery/webhooks.py, docs/webhooks.md): a URL, the event types it takes,
    and its signing secret (``whsec_…``). The secret is stored as given, since every delivery is signed with it; the
    API answers it once, at creation, and never again."""

    __tablename__ = "webhook_endpoints"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base, Tenant):
    """One event for one endpoint: the outbox row written in the transaction that made the event (a job's terminal
    transition), then sent by the scheduler's leader until the endpoint answers 2xx (``delivered``) or the retry
    window is over (``failed``). ``payload`` is the exact body signed and sent, every attempt the same bytes."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    # The end of the retry window: set at the first attempt (and again at the first after a redelivery).
    retry_until: Mapped[float | None] = mapped_column(Float)
    last_attempt_at: Mapped[int | None] = mapped_column(BigInteger)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)


class ProjectSecret(Base, Tenant):
    """A secret of a project that its jobs' integrations read (tunery/integrations.py ``SecretName``: a W&B API key,
    MLflow credentials), set by the project's owner or the admin (``/v1/tunery/secrets``). Stored as given, since a
    trainer is handed the value itself (as a webhook's secret is); the API never answers it, and it reaches only the
    trainers of the project's jobs that use its integration, through their backend (never the object store)."""

    __tablename__ = "project_secrets"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_project_secrets_project_id_name"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
