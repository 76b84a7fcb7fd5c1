"""What the chart's tests share: the variants they render, and helpers to read the rendered documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helm_tools import MINIMAL_VALUES, PRODUCTION_VALUES, helm, template_args

# A development install: the chart's own PostgreSQL, keys and S3 credentials in the chart's Secrets.
DEV_SETS = [
    "postgresql.enabled=true",
    "postgresql.auth.password=p@ss/word",
    "auth.apiKeys={key-one,key-two}",
    "objectStore.s3.endpointUrl=http://seaweedfs.storage:8333",
    "objectStore.s3.accessKeyId=AKID",
    "objectStore.s3.secretAccessKey=s3-secret-value",
    "networkPolicy.enabled=true",
    "vllm.enabled=true",
    "vllm.servedModelName=my-llama",
    "config.baseModels.my-llama=/models/base",
]

VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": {"values": [MINIMAL_VALUES]},
    "production": {"values": [PRODUCTION_VALUES]},
    "dev": {"sets": DEV_SETS},
}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def refusal(bin_dir: Path, *sets: str, values: list[Path] | None = None) -> str:
    """What `helm template` says when it refuses ``sets`` on top of ``values`` (default: the minimal values)."""
    args = template_args(values=[MINIMAL_VALUES] if values is None else values, sets=list(sets))
    out = helm(bin_dir, *args, check=False)
    assert out.returncode != 0, f"rendered with {sets}"
    return out.stderr
