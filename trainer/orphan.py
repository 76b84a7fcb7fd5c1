"""A local trainer outlives a server killed with ``kill -9`` (it runs in its own session, so a cancel can stop its
children too). Left alone it would train on, unseen, holding the CPU or GPU, reporting to nobody. The local backend
names the server's pid in ``TUNERY_PARENT_PID``; :func:`watch_parent` notices when the trainer has been handed to
another parent and stops the run the way a preemption does (SIGTERM: a resume state at the next step boundary), so
the restarted server resumes the job from there.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from tunery.jobspec import PARENT_PID_ENV

log = logging.getLogger("tunery.trainer")

# Set once the server that started this run is gone: the reports still queued have nobody to reach (a restarted
# server listens elsewhere, and refuses this run's token), so the run does not wait for them before it exits.
ORPHANED = threading.Event()


def watch_parent(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """Send this process SIGTERM once its parent is no longer ``parent_pid``; checks every ``interval`` s."""

    def watch() -> None:
        stopped = threading.Event()
        while not stopped.wait(interval):
            if os.getppid() != parent_pid:
                log.warning("the server (pid %d) is gone: stopping this run as if preempted", parent_pid)
                ORPHANED.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="tunery-parent-watch", daemon=True)
    thread.start()
    return thread


def watch_parent_from_env() -> threading.Thread | None:
    value = os.environ.get(PARENT_PID_ENV, "")
    return watch_parent(int(value)) if value.isdigit() else None
