"""The embedded server: API + scheduler + local trainer runner + embedded serving engine in one process.

This module is the composition root: it picks each part's implementation from the settings. It imports no
torch; the serving engine loads it on the first chat request.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tunery.db import Database
from tunery.settings import DEMO_MODEL, Settings
from tunery.storage import open_store

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


def build(settings: Settings, *, upgrade_schema: bool = True, prepare_models: bool = True):  # type: ignore[no-untyped-def]
    """Wire every part; returns (FastAPI app, shutdown function)."""
    from api.app import create_app
    from api.context import AppContext
    from scheduler.backends import LocalProcessBackend
    from scheduler.reporting import ReportingServer, ReportingService
    from scheduler.service import Scheduler
    from serving.engine import EmbeddedEngine

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if prepare_models:
        prepare_base_models(settings)
    db = Database(settings.resolved_database_url)
    if upgrade_schema and settings.resolved_database_url.startswith("sqlite"):
        db.upgrade()  # the embedded SQLite file is ours to migrate; production runs `tunery db upgrade`
    db.check_schema()
    store = open_store(settings.resolved_object_store)

    holder: dict[str, Scheduler] = {}

    def wake() -> None:
        if "s" in holder:
            holder["s"].wake()

    reporting = ReportingServer(ReportingService(db, store, on_change=wake), settings.grpc_host, settings.grpc_port)
    backend = LocalProcessBackend(
        settings.trainer_python or sys.executable, grace_seconds=settings.cancel_grace_seconds
    )
    scheduler = Scheduler(settings, db, store, backend, reporting.address, Path(settings.data_dir) / "logs")
    holder["s"] = scheduler
    engine = EmbeddedEngine(
        store,
        settings.model_cache_dir,
        device=settings.trainer_device,
        max_new_tokens=settings.serving_max_new_tokens,
    )
    app = create_app(AppContext(settings=settings, db=db, store=store, engine=engine, wake_scheduler=wake))

    reporting.start()
    scheduler.start()

    def shutdown() -> None:
        scheduler.stop()
        reporting.stop()
        db.engine.dispose()

    return app, shutdown


def serve(settings: Settings) -> None:
    import uvicorn

    app, shutdown = build(settings)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
    finally:
        shutdown()
