"""tunery/quotas.py: the fair queue's order, and a project's limits (its own over the settings' defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from tunery.db import Project
from tunery.quotas import ProjectLimits, fair_order
from tunery.settings import Settings


@dataclass(frozen=True)
class J:
    pk: int
    project_id: str
    priority: int = 0


def order(jobs: list[J], running: dict[str, int] | None = None) -> list[int]:
    return [j.pk for j in fair_order(jobs, running or {})]


def test_one_projects_many_jobs_do_not_starve_anothers_one() -> None:
    jobs = [J(i, "a") for i in range(1, 101)] + [J(101, "b")]
    assert order(jobs)[:3] == [1, 101, 2]  # a's oldest (older head), then b's, then a's again


def test_the_project_with_fewer_running_jobs_goes_first() -> None:
    jobs = [J(1, "a"), J(2, "a"), J(3, "b")]
    assert order(jobs, {"a": 2}) == [3, 1, 2]
    # Round-robin across three projects, each counted as it is served.
    jobs = [J(1, "a"), J(2, "a"), J(3, "a"), J(4, "b"), J(5, "b"), J(6, "c")]
    assert order(jobs) == [1, 4, 6, 2, 5, 3]


def test_within_a_project_priority_then_age() -> None:
    jobs = [J(1, "a", 0), J(2, "a", 5), J(3, "a", 0), J(4, "a", 10), J(5, "a", -3)]
    assert order(jobs) == [4, 2, 1, 3, 5]
    # Priority orders a project's own jobs only: it does not move them ahead of another project's.
    jobs = [J(1, "b"), J(2, "a", 100), J(3, "a", 100)]
    assert order(jobs) == [1, 2, 3]


def test_limits_are_the_projects_own_over_the_defaults() -> None:
    settings = Settings(project_max_concurrent_jobs=4, project_requests_per_minute=60)
    assert ProjectLimits.of(None, settings) == ProjectLimits(4, 0, 0, 60)
    own = Project(id="proj_x", organization_id="o", name="x", created_at=0, max_concurrent_jobs=0, max_stored_bytes=9)
    assert ProjectLimits.of(own, settings) == ProjectLimits(0, 0, 9, 60)  # 0 is the project's own: unlimited
