"""Per-project limits checked before a run is launched: concurrent jobs and GPUs (0: unlimited; a project's own
limits or the TUNERY_PROJECT_* defaults, tunery/quotas.py)."""

from __future__ import annotations

from dataclasses import dataclass

from tunery.quotas import ProjectLimits


@dataclass(frozen=True)
class QuotaDecision:
    verdict: str  # "launch" | "wait" | "refuse"
    message: str = ""


def quota_decision(limits: ProjectLimits, *, running_jobs: int, gpus_in_use: int, gpus_needed: int) -> QuotaDecision:
    """Whether a project may start one more run now: per-project concurrency and GPU quota (0: unlimited)."""
    quota = limits.gpu_quota
    if quota and gpus_needed > quota:
        return QuotaDecision(
            "refuse",
            f"The job needs {gpus_needed} GPUs, more than the project's GPU quota of {quota}.",
        )
    limit = limits.max_concurrent_jobs
    if limit and running_jobs >= limit:
        return QuotaDecision(
            "wait", f"Waiting for a free slot: the project runs {running_jobs} of at most {limit} jobs at once."
        )
    if quota and gpus_in_use + gpus_needed > quota:
        return QuotaDecision(
            "wait",
            f"Waiting for GPU quota: the project uses {gpus_in_use} of {quota} GPUs and the job needs {gpus_needed}.",
        )
    return QuotaDecision("launch")
