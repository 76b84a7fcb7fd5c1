"""The server: API + scheduler + trainer backend + embedded serving engine, in one process (role ``all``, the
embedded mode) or split into ``api`` and ``scheduler`` processes (production, see ``build``).

This module is the composition root: it picks each part's implementation from the settings. It imports no
torch; the serving engine loads it on the first chat request.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tunery.db import Database
from tunery.grpc_tls import api_server_credentials, server_credentials, trainer_tls_environment
from tunery.metrics import CONTENT_TYPE, Metrics
from tunery.settings import DEMO_MODEL, ROLES, Settings, UnsafeSettings
from tunery.storage import open_store, store_environment
from tunery.tenancy import ensure_default_rows, keys_issued

log = logging.getLogger("tunery.server")


def prepare_base_models(settings: Settings) -> None:
    """Convert the demo model to safetensors once (in a subprocess: the control plane stays torch-free)."""
    if not settings.demo_model:
        return
    out = settings.demo_model_dir
    if (out / "config.json").is_file():
        return
    log.info("preparing the %s demo model in %s (once)", DEMO_MODEL, out)
    python = settings.trainer_python or sys.executable
    subprocess.run([python, "-m", "trainer.models", "prepare-demo", "--out", str(out)], check=True)


def make_backend(settings: Settings):  # type: ignore[no-untyped-def]
    """The scheduler backend named by TUNERY_SCHEDULER_BACKEND: local processes or Kubernetes Jobs."""
    if settings.scheduler_backend == "kubernetes":
        from scheduler.k8s import KubernetesBackend

        return KubernetesBackend(settings)
    from scheduler.backends import LocalProcessBackend
    from scheduler.cores import trainer_threads

    brokered = settings.trainers_brokered
    return LocalProcessBackend(
        settings.trainer_python or sys.executable,
        grace_seconds=settings.cancel_grace_seconds,
        # the trainer dials the reporting channel as set (TLS) and, unless brokered, opens the same store (TUNERY_S3_*)
        env={**({} if brokered else store_environment(settings)), **trainer_tls_environment(settings)},
        without_store_credentials=brokered,
        threads=trainer_threads(settings.trainer_threads, settings.max_concurrent_runs),
    )


def make_leader(settings: Settings):  # type: ignore[no-untyped-def]
    """The Lease-based leader elector when TUNERY_SCHEDULER_LEADER_ELECTION is on, else None."""
    if not settings.scheduler_leader_election:
        return None
    from scheduler.k8s import api_client
    from scheduler.leader import LeaderElector

    return LeaderElector(
        api_client(settings), settings.k8s_namespace, lease_seconds=settings.scheduler_leader_lease_seconds
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked (sys.modules[module] is None)
        return False


def make_vllm_supervisor(settings: Settings):  # type: ignore[no-untyped-def]
    """With TUNERY_VLLM_LAUNCH: a started supervisor running one vLLM per base model that no URL names."""
    if settings.serving_backend != "vllm" or not settings.vllm_launch:
        return None
    from serving.supervisor import VLLMSupervisor

    models = {n: p for n, p in settings.base_model_paths().items() if n not in settings.vllm_urls}
    return VLLMSupervisor(settings, models).start()


def core_share(settings: Settings, backend: Any):  # type: ignore[no-untyped-def]
    """How the embedded server shares its cores between the local trainers of ``backend`` and its chat engine
    (scheduler.cores); None where they do not share them: trainers on Kubernetes, vLLM serving, or an engine whose
    threads are set (TUNERY_SERVING_THREADS)."""
    from scheduler.backends import LocalProcessBackend
    from scheduler.cores import CoreShare, usable_cores

    if not isinstance(backend, LocalProcessBackend) or settings.serving_backend != "embedded":
        return None
    if settings.serving_threads > 0:
        return None
    cores = usable_cores()
    return CoreShare(cores, backend.threads or cores, backend.running, settings.serving_busy_seconds)


def make_serving(settings: Settings, store, supervisor=None, cores=None):  # type: ignore[no-untyped-def]
    """The serving backend named by TUNERY_SERVING_BACKEND; None when the embedded engine cannot run here (a
    control-plane image has no torch): chat completions then answer 503 naming the setting. ``cores``: the
    :class:`scheduler.cores.CoreShare` the embedded engine takes its CPU threads from."""
    if settings.serving_backend == "vllm":
        from serving.vllm import VLLMBackend

        return VLLMBackend(
            store,
            url=settings.vllm_url,
            urls={**(supervisor.urls if supervisor else {}), **settings.vllm_urls},
            api_key=settings.vllm_api_key.get_secret_value(),
            max_lora_rank=settings.vllm_max_lora_rank,
            connect_timeout=settings.vllm_connect_timeout_seconds,
            read_timeout=settings.vllm_read_timeout_seconds,
            retry_after=settings.vllm_retry_after_seconds,
            starting=supervisor.starting if supervisor else None,
        )
    if not all(_importable(m) for m in ("torch", "transformers", "peft")):
        log.warning(
            "the embedded serving engine needs torch, transformers and peft, which this environment lacks: chat "
            "completions answer 503 (serve through vLLM: TUNERY_SERVING_BACKEND=vllm, TUNERY_VLLM_URL)"
        )
        return None
    from serving.embedded import EmbeddedBackend
    from serving.engine import EmbeddedEngine

    engine = EmbeddedEngine(
        store,
        settings.model_cache_dir,
        device=settings.trainer_device,
        max_new_tokens=settings.serving_max_new_tokens,
        cpu_threads=(lambda: settings.serving_threads) if settings.serving_threads else cores and cores.engine_threads,
    )
    return EmbeddedBackend(engine, max_queue=settings.serving_max_queue)


def store_has_keys(settings: Settings) -> bool:
    """Whether the metadata store has issued API keys, asked without creating or migrating anything: a SQLite file
    that does not exist, or a store without the keys' table yet, has issued none."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
        return False
    db = Database(url.render_as_string(hide_password=False))
    try:
        with db.session() as s:
            return keys_issued(s)
    except SQLAlchemyError:
        return False
    finally:
        db.engine.dispose()


def build(settings: Settings, *, upgrade_schema: bool = True, prepare_models: bool = True, role: str = "all"):  # type: ignore[no-untyped-def]
    """Wire every part of a role; returns (ASGI app, shutdown function).

    ``all`` (the embedded server): API + scheduler + reporting service + serving engine. ``api``: the HTTP API
    only (a scheduler elsewhere picks up its jobs from the metadata store). ``scheduler``: the scheduler loop and
    the gRPC reporting service, with a small HTTP app answering ``/healthz`` for probes. A role refuses to start
    on unsafe settings (:class:`UnsafeSettings`: an ``api`` role without API keys, see
    :meth:`Settings.open_access_refusal`).
    """
    from scheduler.reporting import ReportingServer, ReportingService
    from scheduler.service import Scheduler

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    refusal = settings.open_access_refusal(role)
    if refusal and settings.open_access_refusal(role, keys_issued=store_has_keys(settings)) is None:
        refusal = None  # the store has issued keys: every request needs one
    refusal = refusal or (settings.object_access_refusal() if role in ("all", "scheduler") else None)
    brokered = settings.trainers_brokered
    if refusal:
        raise UnsafeSettings(refusal)
    if role == "api" and not settings.api_keys and not store_has_keys(settings):
        log.warning("TUNERY_ALLOW_OPEN: the API accepts every request, without a key, as its one tenant")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if prepare_models and role != "scheduler":
        prepare_base_models(settings)
    db = Database(
        settings.resolved_database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    if upgrade_schema and settings.resolved_database_url.startswith("sqlite"):
        db.upgrade()  # the embedded SQLite file is ours to migrate; production runs `tunery db upgrade`
    try:
        db.check_schema()  # any other database: refuse to start on a schema that is not the code's
    except Exception:
        db.engine.dispose()
        raise
    store = open_store(settings.resolved_object_store, settings)
    store.check()  # a missing bucket or bad credentials stop the start with a clear message
    metrics = Metrics()

    holder: dict[str, Scheduler] = {}
    backend = cores = None

    def wake() -> None:
        if "s" in holder:
            holder["s"].wake()

    reporting = None
    if role in ("all", "scheduler"):
        from scheduler.object_access import ObjectAccessService

        backend = make_backend(settings)
        # The embedded server's chat engine and local trainers share its cores; a scheduler alone has no engine.
        cores = core_share(settings, backend) if role == "all" else None
        reporting = ReportingServer(
            ReportingService(
                db, store, on_change=wake, metrics=metrics, trainer_threads=cores and cores.trainer_threads_now
            ),
            settings.grpc_host,
            settings.grpc_port,
            credentials=server_credentials(settings),
            objects=ObjectAccessService(db, store, settings.trainer_url_seconds, metrics) if brokered else None,
        )
        scheduler = Scheduler(
            settings,
            db,
            store,
            backend,
            settings.grpc_advertise_address or reporting.address,
            Path(settings.data_dir) / "logs",
            leader=make_leader(settings),
            metrics=metrics,
        )
        holder["s"] = scheduler
        # The metadata store's state (jobs by status, queue age) comes from the process that schedules: the leader.
        metrics.watch_state(db, scheduler.is_leading)

    supervisor = serving = ctx = None
    if role == "scheduler":
        app = health_app(holder["s"], metrics if settings.metrics_enabled else None)
    else:
        from api.app import create_app
        from api.context import AppContext

        if settings.api_grpc_port >= 0:
            api_server_credentials(settings)  # a half-set TLS pair stops the start here, not once the app starts
        ensure_default_rows(db, settings)  # the default organization and project, as the admin API lists them
        supervisor = make_vllm_supervisor(settings)
        serving = make_serving(settings, store, supervisor, cores=cores)
        ctx = AppContext(settings=settings, db=db, store=store, serving=serving, wake_scheduler=wake, metrics=metrics)
        app = create_app(ctx)

    if reporting is not None:
        reporting.start()
    if "s" in holder:
        holder["s"].start()

    def shutdown() -> None:
        if ctx is not None:
            ctx.close()
        if serving is not None:
            serving.close()
        if supervisor is not None:
            supervisor.stop()
        if "s" in holder:
            holder["s"].stop()
        if reporting is not None:
            reporting.stop()
        db.engine.dispose()

    return app, shutdown


def health_app(scheduler, metrics: Metrics | None):  # type: ignore[no-untyped-def]
    """The scheduler role's HTTP side: ``/healthz`` (liveness/readiness) and whether this replica leads, and
    ``/metrics`` unless TUNERY_METRICS_ENABLED is off."""
    from fastapi import FastAPI, Response

    app = FastAPI(title="Tunery scheduler", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        return {"status": "ok", "leader": scheduler.is_leading()}

    if metrics is not None:

        @app.get("/metrics")
        def prometheus() -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """The arguments ``tunery serve`` gives ``uvicorn.run`` (bench/api_load.py serves its bare reference with them
    too). The event loop and the HTTP parser are uvicorn's ``auto``: uvloop and httptools, dependencies (see
    pyproject.toml), else asyncio and h11."""
    return {"host": host, "port": port, "log_level": "info", "access_log": False, "loop": "auto", "http": "auto"}


# The collector's youngest generation is collected every this many allocations (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Before serving: the objects made so far (modules, the app and its routes, the ORM's mappers, about 200,000)
    live as long as the process, so they leave the cyclic collector's reach (``gc.freeze``); and its youngest
    generation is collected every :data:`GC_YOUNG_THRESHOLD` allocations.

    Every request leaves reference cycles that only the collector frees (the framework's exit stacks, uvicorn's
    request cycle). Under 200 clients, a full collection walked the start-up's objects too: 140 ms each, several a
    second, a quarter of the process's CPU and the tail of every latency (``/health`` on the API port waited up to
    135 ms). Frozen, and the young collected ten thousand allocations at a time: 1,320 -> about 1,650 requests/s,
    and ``/health``'s p99 under 100 ms (bench/api_load.py, which serves its bare reference the same way)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve(settings: Settings, role: str = "all") -> None:
    import uvicorn

    app, shutdown = build(settings, role=role)
    settle_heap()
    try:
        uvicorn.run(app, **uvicorn_options(settings.host, settings.port))
    finally:
        shutdown()
