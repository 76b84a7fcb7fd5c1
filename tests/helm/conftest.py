"""Fixtures of the chart's tests: helm itself, and the chart rendered in each variant (tests/helm/chart.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helm.chart import VARIANTS
from tests.helm_tools import render, tools_dir


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return tools_dir()


@pytest.fixture(scope="session")
def rendered(bin_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: render(bin_dir, **kw) for name, kw in VARIANTS.items()}
