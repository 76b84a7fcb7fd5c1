"""How fast scheduler replicas claim and launch queued jobs, and that none is launched twice.

    .venv/bin/python bench/scheduler_claims.py [--jobs 400] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Queues N jobs, then runs 1 replica on SQLite, and 1 and 2 replicas on a fresh PostgreSQL database, each calling
``launch_queued()`` in a loop until every job is launched. The backend records launches and starts nothing, so the
figure is the metadata store's side of a launch: claim (SELECT ... FOR UPDATE SKIP LOCKED), spec written to the
object store, status flipped, handle recorded. Prints launches/s and the number of duplicate launches (must be 0).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.backends import Backend, RunStatus
from scheduler.service import Scheduler
from tests.scheduler.test_claims import Replicas
from tunery.settings import Settings
from tunery.storage import open_store


class Recording(Backend):
    def __init__(self, launches: list[str], lock: threading.Lock):
        self.launches, self.lock = launches, lock

    def launch(
        self,
        job_id: str,
        spec_ref: str,
        log_path: Path,
        runtime: dict[str, Any] | None = None,
        run_token: str = "",
        secrets: dict[str, str] | None = None,
    ) -> str:
        with self.lock:
            self.launches.append(job_id)
        return f"rec:{job_id}"

    def status(self, handle: str) -> RunStatus:
        return RunStatus(running=True)

    def cancel(self, handle: str) -> None:
        pass

    def close(self) -> None:
        pass


def run(url: str, replicas: int, n_jobs: int, tmp: Path) -> tuple[float, int]:
    r = Replicas(tmp, url)
    r.queue_jobs(n_jobs)
    launches: list[str] = []
    lock = threading.Lock()
    scheds = []
    for i in range(replicas):
        settings = Settings(
            data_dir=tmp,
            database_url=url,
            demo_model=False,
            base_models={"tiny": str(tmp / "no-model")},
            scheduler_replica_id=f"bench-{i}",
            max_concurrent_runs=n_jobs,
        )
        store = open_store((tmp / "objects").as_uri())
        scheds.append(Scheduler(settings, r.db, store, Recording(launches, lock), "127.0.0.1:1", tmp / "logs"))

    def work(s: Scheduler) -> None:
        s.settings.max_concurrent_runs = 0
        while len(launches) < n_jobs:
            # Claim in batches of 8, as a replica with free slots would.
            s.settings.max_concurrent_runs += 8
            s.launch_queued()

    threads = [threading.Thread(target=work, args=(s,)) for s in scheds]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    duplicates = sum(n - 1 for n in Counter(launches).values() if n > 1)
    r.close()
    return n_jobs / elapsed, duplicates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()

    import psycopg
    from sqlalchemy.engine import make_url

    with tempfile.TemporaryDirectory() as d:
        rate, dup = run(f"sqlite:///{Path(d) / 'tunery.db'}", 1, args.jobs, Path(d))
        print(f"sqlite      1 replica : {rate:7.1f} launches/s, {dup} duplicate launches")
    for replicas in (1, 2):
        name = f"tunery_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(args.pg).set(drivername="postgresql+psycopg", database=name).render_as_string(False)
            from tunery.db import Database

            db = Database(url)
            db.upgrade()
            db.engine.dispose()
            with tempfile.TemporaryDirectory() as d:
                rate, dup = run(url, replicas, args.jobs, Path(d))
            label = f"{replicas} replica{'s' if replicas > 1 else ' '}"
            print(f"postgresql  {label}: {rate:7.1f} launches/s, {dup} duplicate launches")
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
