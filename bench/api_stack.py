"""The Tunery that bench/api_load.py and bench/grpc_vs_rest.py load: a metadata store filled directly (jobs, events,
files, models), ``tunery serve`` on it, and the bare FastAPI reference served the same way."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny-llama"
MODEL_CACHE = Path(os.environ.get("TUNERY_TEST_MODEL_CACHE", Path.home() / ".cache" / "tunery" / "models"))
ORG, PROJECT, SLUG = "org-default", "proj_default", "personal"


# ---- the metadata store ---------------------------------------------------------------------------------------------
@dataclass
class Seeded:
    job_ids: list[str]
    file_ids: list[str]
    events: int
    models: int
    seconds: float


def seed(url: str, n_jobs: int, n_files: int, events_per_job: int, n_models: int) -> Seeded:
    """Insert the rows in bulk (Core inserts, a few thousand per statement) on a freshly migrated schema."""
    from sqlalchemy import insert

    from api.protocol.jobs import DataQualityOptions
    from tunery import ids
    from tunery.db import Database, File, FineTunedModel, Job, JobEvent
    from tunery.plan import TrainingPlan

    t0 = time.perf_counter()
    rng = random.Random(11)
    db = Database(url)
    db.upgrade()
    start = int(time.time()) - 10 * n_jobs
    files: list[dict[str, Any]] = [
        {
            "id": ids.file_id(),
            "organization_id": ORG,
            "project_id": PROJECT,
            "filename": f"train-{i}.jsonl",
            "purpose": "fine-tune",
            "bytes": rng.randrange(10_000, 50_000_000),
            "sha256": secrets.token_hex(32),
            "object_key": f"files/bench-{i}",
            "created_at": start - n_files + i,
            "expires_at": None,
            "status": "processed",
            "status_details": None,
        }
        for i in range(n_files)
    ]
    plan = TrainingPlan(n_epochs=3, batch_size=4, learning_rate=2e-4, max_seq_length=2048, n_checkpoints=3, n_evals=0)
    training = plan.training_options()
    data = DataQualityOptions().model_dump(mode="json")
    jobs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for i in range(n_jobs):
        jid = ids.job_id()
        status = ("succeeded", "succeeded", "succeeded", "failed", "cancelled")[i % 5]
        hp = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}
        ft = ids.fine_tuned_model_name(TINY, SLUG, "bench", jid)
        created = start + 10 * i
        jobs.append(
            {
                "id": jid,
                "organization_id": ORG,
                "project_id": PROJECT,
                "created_at": created,
                "started_at": created + 2,
                "finished_at": created + 9,
                "status": status,
                "model": TINY,
                "base_model": TINY,
                "training_file": files[i % n_files]["id"],
                "validation_file": files[(i + 1) % n_files]["id"] if i % 2 else None,
                "suffix": "bench",
                "seed": i,
                "metadata": {"team": f"team-{i % 7}", "run": str(i)},
                "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
                "hyperparameters": hp,
                "integrations": [],
                # a third asked for Tunery's extensions (the job object then carries ``tunery``)
                "extensions": {"tunery": {"training": training, **({"data": data} if i % 3 == 0 else {})}},
                "error": {
                    "code": "invalid_training_file",
                    "message": "Training file has 3 invalid lines.",
                    "param": None,
                }
                if status == "failed"
                else None,
                "fine_tuned_model": ft,
                "trained_tokens": 123_456 if status == "succeeded" else None,
                "result_files": [],
                "estimated_finish": None,
                "attempts": 1,
                "total_steps": 30,
                "plan": plan.model_dump(mode="json"),
                "cancel_requested": status == "cancelled",
                "pause_requested": False,
                "crash_restarts": 0,
                "version": 1,
            }
        )
        for k in range(events_per_job):
            step = k + 1
            metric = 0 < k < events_per_job - 1
            events.append(
                {
                    "id": ids.event_id(),
                    "job_id": jid,
                    "created_at": created + k,
                    "level": "info",
                    "type": "metrics" if metric else "message",
                    "message": f"Step {step}/30: training loss={2.5 / step:.4f}"
                    if metric
                    else "Fine-tuning job started",
                    "data": {"step": step, "train_loss": 2.5 / step, "total_steps": 30} if metric else None,
                }
            )
        if status == "succeeded" and len(models) < n_models:
            models.append(
                {
                    "id": ft,
                    "organization_id": ORG,
                    "project_id": PROJECT,
                    "kind": "fine_tuned",
                    "base_model": TINY,
                    "job_id": jid,
                    "object_prefix": f"models/{jid}",
                    "owned_by": ORG,
                    "created_at": created + 9,
                }
            )
    with db.session() as s:
        for table, rows in ((File, files), (Job, jobs), (JobEvent, events), (FineTunedModel, models)):
            for i in range(0, len(rows), 5000):
                s.execute(insert(table), rows[i : i + 5000])
    db.engine.dispose()
    return Seeded([j["id"] for j in jobs], [f["id"] for f in files], len(events), len(models), time.perf_counter() - t0)


@contextlib.contextmanager
def metadata_store(kind: str, pg_admin: str, tmp: Path) -> Iterator[str]:
    """The SQLAlchemy URL of an empty store: a SQLite file in ``tmp``, or a new PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'data' / 'tunery.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"tunery_bench_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_admin).set(drivername="postgresql+psycopg", database=name).render_as_string(False)
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- servers --------------------------------------------------------------------------------------------------------


def uvicorn_run(app: Any, port: int) -> None:
    """``uvicorn.run`` as ``tunery serve`` runs it: its arguments (api/server.py's ``uvicorn_options``: uvloop and
    httptools when installed) and the collector settled first (``settle_heap``)."""
    import uvicorn

    from api.server import settle_heap, uvicorn_options

    settle_heap()
    uvicorn.run(app, **uvicorn_options("127.0.0.1", port))


def server_stack() -> str:
    """The event loop and HTTP parser uvicorn's ``auto`` picks in this interpreter (the servers' too)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    try:
        import uvloop  # noqa: F401
    except ImportError:
        loop = "asyncio"
    else:
        loop = "uvloop"
    return f"{loop} + {AutoHTTPProtocol.__name__}"


def serve_bare(port: int) -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/bare/async")
    async def bare_async() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/bare/sync")
    def bare_sync() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn_run(app, port)


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    probe_url: str = ""  # Tunery's probe port (TUNERY_PROBE_PORT, api/probe.py)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful exit: `tunery serve` then shuts its parts down
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self, loop_thread: bool = False) -> float:
        """User + system CPU time of the server process itself (not its trainer children), or of its main thread
        alone (the event loop's)."""
        stat = f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat" if loop_thread else f"/proc/{self.proc.pid}/stat"
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(server: Server, path: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}); log: {server.log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer {path} in {timeout:.0f} s; log: {server.log}")


def start_tunery(tmp: Path, url: str) -> Server:
    port, probe_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TUNERY_HOST": "127.0.0.1",
        "TUNERY_PORT": str(port),
        "TUNERY_PROBE_PORT": str(probe_port),
        "TUNERY_DATA_DIR": str(tmp / "data"),
        "TUNERY_DATABASE_URL": url,
        "TUNERY_DEMO_MODEL": "false",
        "TUNERY_BASE_MODELS": json.dumps({TINY: str(MODEL_CACHE / TINY)}),
        "TUNERY_MODEL_CACHE_DIR": str(tmp / "cache"),
        "TUNERY_TRAINER_DEVICE": "cpu",
    }
    log = tmp / "tunery.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"], cwd=ROOT, env=env, stdout=out, stderr=out)
    server = Server("tunery serve", f"http://127.0.0.1:{port}", proc, log, f"http://127.0.0.1:{probe_port}")
    wait_up(server, "/health")
    return server


def start_bare(tmp: Path) -> Server:
    port = free_port()
    log = tmp / "bare.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "api_load.py"), "--internal", "serve-bare", "--port", str(port)],
            stdout=out,
            stderr=out,
        )
    server = Server("bare FastAPI", f"http://127.0.0.1:{port}", proc, log)
    wait_up(server, "/bare/sync")
    return server


def ensure_tiny_model() -> None:
    if (MODEL_CACHE / TINY / "config.json").is_file():
        return
    from trainer.models import make_tiny_llama, prepare_demo_model

    make_tiny_llama(prepare_demo_model(MODEL_CACHE / "smollm2-135m-instruct"), MODEL_CACHE / TINY)
