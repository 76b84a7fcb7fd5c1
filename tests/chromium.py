"""A real headless Chromium for the dashboard's tests (tests/e2e/test_dashboard.py): Debian's ``chromium`` and
``chromium-driver`` (``make browser`` installs them), driven by Selenium. Without them the tests skip with the reason,
except under CI=true, where they fail (tests/metadata_stores.py's rule for every real part)."""

from __future__ import annotations

import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.metadata_stores import unavailable

T = TypeVar("T")
WIDTH, HEIGHT = 1280, 1400


def chromium_paths() -> tuple[str, str]:
    """(browser, driver): Debian's, or those TUNERY_TEST_CHROMIUM and TUNERY_TEST_CHROMEDRIVER name."""
    browser = shutil.which(os.environ.get("TUNERY_TEST_CHROMIUM", "chromium"))
    driver = shutil.which(os.environ.get("TUNERY_TEST_CHROMEDRIVER", "chromedriver"))
    if not browser or not driver:
        unavailable("no chromium and chromedriver here (run `make browser`: apt-get install chromium chromium-driver)")
    return str(browser), str(driver)


def start_chromium() -> Any:
    """A headless Chromium session through its own chromedriver (Selenium Manager never downloads one)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (the dev extra: pip install -e '.[dev]')")
        raise
    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root, as on CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait_for(check: Callable[[], T | None], timeout: float = 20, what: str = "", interval: float = 0.1) -> T:
    """``check()``'s first truthy answer; an exception on the way counts as not yet (the page redraws)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # a stale element while the page redraws
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}; last error: {last!r}")


def png_pixels(path: Path) -> Any:
    """The pixels of an 8-bit RGB or RGBA PNG, as Chromium writes its screenshots: a (height, width, 3) uint8 array.
    Rows filtered with None, Sub or Up are undone with numpy, Average and Paeth rows (a few) byte by byte."""
    import numpy as np

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), f"unexpected PNG format (depth {depth}, color type {color})"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = int(raw[y, 0]), raw[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:
            row = (np.cumsum(line.reshape(width, bpp).astype(np.int64), axis=0) % 256).astype(np.uint8).ravel()
        elif kind == 2:
            row = line + prev  # uint8 wraps: modulo 256
        else:
            cur, up = bytearray(line.tobytes()), prev.tobytes()
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = up[x]
                if kind == 3:
                    cur[x] = (cur[x] + (a + b) // 2) & 0xFF
                else:
                    c = up[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[x] = (cur[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            row = np.frombuffer(bytes(cur), dtype=np.uint8)
        out[y] = prev = row
    return out.reshape(height, width, bpp)[:, :, :3]
