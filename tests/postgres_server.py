"""A throwaway PostgreSQL cluster for the tests, when the machine's server (127.0.0.1:5432) is not running but
PostgreSQL's binaries are installed: initdb in a temporary folder, trust auth, loopback only, fsync off."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tunery.ports import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """Yields the admin URL of a fresh cluster (user postgres), or None when PostgreSQL is not installed."""
    bindir = _bin_dir()
    if bindir is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="tunery-pg-"))
    data = folder / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "-N"],
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
        start = [*pg_ctl, "-w", "-l", str(folder / "log"), "-o", options, "start"]
        subprocess.run(start, check=True, capture_output=True)
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
