"""The directory of a contained python-grader sandbox (tunery/sandbox.py): measured while the user code runs,
against the bounds a tmpfs would set (:class:`Watch`), and removed afterwards however deep the code made it
(:func:`remove_tree`). Standard library only.

Contained, there is no tmpfs: the sandbox's working directory is a fresh folder on disk. The parent measures it every
:data:`CHECK_INTERVAL_S` (or, after a measure that took long, ten times as long as it took: the measures take a tenth
of a core at most), and before each answer counts. It walks the directory with a descriptor per level of folders:
deeper than :data:`MAX_DEPTH`, it stops the sandbox rather than hold more of them.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

from tunery.sandbox_child import MAX_FILES

CHECK_INTERVAL_S = 0.01
MAX_DEPTH = 64


@dataclass
class Watch:
    """The bounds of a contained sandbox's directory (``workdir``; None: a tmpfs bounds it), which the parent
    measures every :data:`CHECK_INTERVAL_S` (or ten times as long as the last measure took) and before each answer
    counts: its bytes (each file's allocated blocks or its size, whichever is larger, once per file; folders, and the
    files the worker ``pid`` removed but holds open, included) at most ``disk_bytes``; its files (every name, and the
    directory itself, as a tmpfs counts inodes) at most :data:`MAX_FILES`; its folders at most :data:`MAX_DEPTH`
    deep. Once over, the sandbox is killed."""

    workdir: str | None
    pid: int
    disk_bytes: int
    due_at: float = 0.0  # when to measure next

    @property
    def measures(self) -> bool:
        """Contained: a directory on disk that only these measures bound."""
        return self.workdir is not None

    def wait(self, left: float) -> float:
        """How long the parent may wait for the sandbox, ``left`` at most, before the next measure."""
        return left if self.workdir is None else min(left, max(0.0, self.due_at - time.monotonic()))

    def due(self) -> str | None:
        """:meth:`check`, when its time has come."""
        return self.check() if self.workdir is not None and time.monotonic() >= self.due_at else None

    def check(self) -> str | None:
        """Why the sandbox is over its bounds (None: it is not, or it is not contained)."""
        if self.workdir is None:
            return None
        started, usage = time.monotonic(), _Usage(self.disk_bytes)
        try:
            over = _walk(self.workdir, usage) or _removed_open_files(self.pid, usage)
        except OSError as e:
            over = f"grade()'s directory could not be measured ({e.strerror}): it was killed"
        now = time.monotonic()
        self.due_at = now + max(CHECK_INTERVAL_S, 10 * (now - started))
        return over


class _Usage:
    """What a contained sandbox's directory holds, so far in a measure."""

    def __init__(self, disk_bytes: int):
        self.disk_bytes = disk_bytes
        self.bytes = 0
        self.files = 1  # the directory itself
        self.seen: set[int] = set()  # the inodes counted

    def add(self, st: os.stat_result, named: bool = True) -> bool:
        """One more name (``named``) of a file: whether the file is new to this measure."""
        self.files += named
        if st.st_ino in self.seen:
            return False
        self.seen.add(st.st_ino)
        self.bytes += max(st.st_blocks * 512, st.st_size)
        return True

    def over(self) -> str | None:
        if self.bytes > self.disk_bytes:
            return f"grade() wrote more than {self.disk_bytes} bytes to its directory: it was killed"
        if self.files > MAX_FILES:
            return f"grade() made more than {MAX_FILES} files in its directory: it was killed"
        return None


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)  # a name removed or replaced while it was measured


def _walk(workdir: str, usage: _Usage) -> str | None:
    """The tree under ``workdir`` added to ``usage``, depth first, a descriptor held for each folder above the one
    measured: why it is over its bounds, as soon as it is, else None."""
    fds = [os.open(workdir, _DIRECTORY)]
    todo: list[tuple[int, str]] = []  # (the depth of its parent, a folder's name)
    try:
        over = _scan(fds[0], 0, usage, todo)
        while todo and not over:
            level, name = todo.pop()
            while len(fds) > level + 1:
                os.close(fds.pop())
            if level >= MAX_DEPTH:
                return f"grade() nested folders more than {MAX_DEPTH} deep in its directory: it was killed"
            try:
                fds.append(os.open(name, _DIRECTORY, dir_fd=fds[level]))
            except OSError as e:
                if e.errno in _GONE:
                    continue
                raise
            over = _scan(fds[-1], level + 1, usage, todo)
        return over
    finally:
        for fd in fds:
            os.close(fd)


def _scan(fd: int, level: int, usage: _Usage, todo: list[tuple[int, str]]) -> str | None:
    """The entries of the folder ``fd`` (at depth ``level``) added to ``usage``, its folders to ``todo``. A name is
    counted once: reading a folder while files are made in it may return a name twice."""
    names: set[str] = set()
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.name in names:
                continue
            names.add(entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if usage.add(st) and stat.S_ISDIR(st.st_mode):  # a folder seen twice was moved while measured
                todo.append((level, entry.name))
            over = usage.over()
            if over:
                return over
    return None


def _removed_open_files(pid: int, usage: _Usage) -> str | None:
    """The files the worker ``pid`` removed (or made without a name) but holds open, added to ``usage``."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return None  # it has ended
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 0:
            usage.add(st, named=False)
    return usage.over()


def remove_tree(path: str) -> None:
    """``path`` and all it holds, however deep (its sandbox has ended: nothing changes it meanwhile), with one
    descriptor at a time: down into each folder, and back up through its ``..``; a folder the user code made
    unreadable is made readable first."""
    os.chmod(path, 0o700)
    fd = os.open(path, _DIRECTORY)
    try:
        pending = [_clear(fd)]  # at each depth from ``path`` down, the folders left to remove (the one entered last)
        while True:
            if pending[-1]:
                os.chmod(pending[-1][-1], 0o700, dir_fd=fd)
                child = os.open(pending[-1][-1], _DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
                pending.append(_clear(fd))
                continue
            pending.pop()
            if not pending:
                break
            parent = os.open("..", _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(pending[-1].pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear(fd: int) -> list[str]:
    """Every entry of the folder ``fd`` but its folders removed: the names of those."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return folders
