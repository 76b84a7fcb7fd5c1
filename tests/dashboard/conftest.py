"""The dashboard's browser: one headless Chromium per test module (tests/dashboard/browser.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.dashboard.browser import start_chromium


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One browser for the whole module (a start costs about a second)."""
    driver = start_chromium()
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
