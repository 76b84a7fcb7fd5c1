"""The dispatcher's fair queue (scheduler/dispatch.py, tunery/quotas.py) with the real LocalProcessBackend and the
recording stand-in trainer of tests/scheduler/test_claims.py: across projects round-robin, within one by priority;
and a project's limit of running jobs holds with two replicas launching at once (PostgreSQL)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.scheduler.test_claims import Replicas, wait_for
from tests.scheduler.test_claims import pg_replicas as pg_replicas  # the fixture
from tunery.db import File, Job, Project
from tunery.jobstate import TERMINAL


@pytest.fixture(params=["sqlite", "postgresql"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = (
        f"sqlite:///{tmp_path / 'tunery.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("migrated_pg_url")
    )
    r = Replicas(tmp_path, url)
    yield r
    r.close()


def queue(r: Replicas, project: str, n: int, priority: int = 0) -> list[str]:
    """n queued jobs of ``project`` (and their training file), with ``priority``."""
    job_ids = r.queue_jobs(n)
    with r.db.session() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(project_id=project, priority=priority))
        files = select(Job.training_file).where(Job.id.in_(job_ids))
        s.execute(update(File).where(File.id.in_(files)).values(project_id=project))
    return job_ids


def test_one_projects_hundred_jobs_do_not_starve_anothers_one(replicas: Replicas) -> None:
    a_jobs = queue(replicas, "proj_a", 100)
    [b_job] = queue(replicas, "proj_b", 1)  # queued last
    sched = replicas.scheduler("embedded" if replicas.url.startswith("sqlite") else "r1", seconds=30)
    sched.launch_queued()  # two free slots
    launched = [job for _, job in replicas.launched()]
    assert launched == [a_jobs[0], b_job]


def test_priority_orders_a_projects_own_jobs(replicas: Replicas) -> None:
    low = queue(replicas, "proj_a", 2)
    high = queue(replicas, "proj_a", 1, priority=10)
    mid = queue(replicas, "proj_a", 1, priority=5)
    sched = replicas.scheduler("embedded" if replicas.url.startswith("sqlite") else "r1", seconds=30)
    sched.launch_queued()
    sched.launch_queued()  # both slots are taken: nothing more
    assert [job for _, job in replicas.launched()] == [high[0], mid[0]]
    for handle in [j.run_handle for j in replicas.jobs().values() if j.run_handle]:
        sched.backend.cancel(handle)
    with replicas.db.session() as s:
        s.execute(update(Job).where(Job.status == "running").values(status="cancelled", run_handle=None))
    sched.launch_queued()
    assert [job for _, job in replicas.launched()][2:] == low  # then by age


def test_twenty_jobs_at_once_never_run_past_the_projects_limit(pg_replicas: Replicas) -> None:
    """Two replicas with 4 free slots each; the project may run 2 jobs at once (its own limit, in its row). Every
    job runs exactly once, and the running jobs, sampled throughout, never exceed 2."""
    with pg_replicas.db.session() as s:
        s.add(Project(id="proj_a", organization_id="org-default", name="a", created_at=0, max_concurrent_jobs=2))
    a = pg_replicas.scheduler("replica-a", seconds=0.4, max_concurrent_runs=4, max_run_retries=0)
    b = pg_replicas.scheduler("replica-b", seconds=0.4, max_concurrent_runs=4, max_run_retries=0)
    most, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            with pg_replicas.db.session() as s:
                n = s.scalar(select(func.count()).select_from(Job).where(Job.status == "running"))
            most[0] = max(most[0], n or 0)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    job_ids = queue(pg_replicas, "proj_a", 20)
    a.start()
    b.start()
    try:
        wait_for(lambda: all(j.status in TERMINAL for j in pg_replicas.jobs().values()), what="every job finished")
    finally:
        done.set()
        sampler.join()
    launched = [job for _, job in pg_replicas.launched()]
    assert sorted(launched) == sorted(job_ids)  # each exactly once
    assert most[0] == 2
