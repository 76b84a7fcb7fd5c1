"""Untrusted Python, run in an isolated process: the sandbox of OpenAI's ``python`` grader (tunery/graders/,
docs/graders.md). Linux only; standard library only.

The parent (:func:`run_python`, :func:`run_python_batch`) starts ``<this interpreter> -I -S -B sandbox_child.py
<config>`` (the sandbox's own program, tunery/sandbox_child.py) with an almost empty environment, its stdio on pipes,
every other file descriptor closed, a new session (its own process group) and a fresh empty directory as its working
directory. That process, before any user code exists in it:

1. enters new user, network, mount, PID, IPC and UTS namespaces (``unshare(2)`` through libc). The network namespace
   has one loopback interface, down: no address, local or remote, can be reached, nor can a name be resolved.
2. mounts a private tmpfs of ``disk_bytes`` and :data:`MAX_FILES` inodes on its working directory (the parent sees
   that directory stay empty, and nothing is left behind: the mount dies with the namespace), and forks the PID
   namespace's init, which forks the worker and waits for it. When the worker exits, init exits; when the parent kills
   the launcher, init dies (``PR_SET_PDEATHSIG``); when init dies, the kernel kills every process left in the
   namespace.
3. the worker sets its resource limits (CPU seconds, address space, file size, open files, threads, no core files),
   points its stdout and stderr to a log in its directory (the answers travel on a private descriptor), closes every
   other descriptor, installs Landlock: read-only the standard library, the system's shared libraries and the
   packages the user code may import (:data:`ALLOWED_IMPORTS`, those installed), read-write its tmpfs, nothing else
   (no ``/etc``, ``/proc``, ``/dev``, home, repository; no file may be executed), no TCP bind or connect, no signal to
   a process outside it; then sets ``no_new_privs``, a seccomp filter (no new process, only threads; no Unix-domain
   socket, io_uring, ptrace, bpf, userfaultfd, perf events, keyrings, mounts or namespaces) and drops the
   capabilities the user namespace gave it.
4. only then it reads the source and the samples as JSON on stdin, runs the source, calls ``grade(sample, item)``
   for each sample and writes one JSON line per sample.

**Contained**, where user namespaces are refused (a container under its runtime's default seccomp profile, such as
a Kubernetes pod's ``RuntimeDefault``, refuses ``unshare``), the process the parent started is the worker, without
steps 1 and 2: its working directory is the parent's fresh directory on disk, which the parent measures (every
10 ms, and before each answer counts, the worker waiting after each answer for the parent's go on its stdin, so that
what is found is the answered sample's doing; tunery/sandbox_dir.py's :class:`Watch` says how) and kills the sandbox
once it holds more than ``disk_bytes`` or :data:`MAX_FILES` files (or folders too deep or unreadable to measure).
Between two measures the user code can write more, each file at most ``disk_bytes`` (its file-size limit): the bound is
``disk_bytes`` and what it writes between two measures (10 ms apart; up to ~100 ms for a directory of thousands of
files, whose measure takes ~10 ms). A file it removes and then keeps only through a memory mapping (its descriptor
closed) is not seen; it is freed when the sandbox ends, and the directory is removed however deep. Its tasks are
bounded by the address space (the user's task count is the container's); its seccomp filter also refuses every socket
(no network namespace hides the network) and every way to signal, trace or read another process (no PID namespace
hides the container's): ``kill``, ``tkill``, ``tgkill``, the ``sigqueue`` calls, ``pidfd_open`` and
``pidfd_send_signal``, ``process_vm_readv``/``writev`` and ``kcmp``. Landlock, the other limits and the rest of the
filter are the same. ``TUNERY_SANDBOX`` chooses: ``auto`` (namespaces where they can be made, else contained),
``namespaces`` or ``contained``.

The parent gives each sample ``timeout_s`` of wall-clock time (from the previous answer, or the start), kills the
whole sandbox when it is spent, caps what it reads, and starts a fresh sandbox for the samples left after a timeout
or a crash. :func:`unavailable` says, once per process, why no sandbox can be made on this machine (no Landlock, not
Linux, neither way works...): graders are then refused, never run without isolation; :func:`mode` says which way
it is made.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from tunery import sandbox_child
from tunery.sandbox_child import MAX_DETAILS_CHARS, bad_number
from tunery.sandbox_dir import Watch, remove_tree

# What OpenAI documents for its python grader: 2 minutes, 2 GB of memory, 1 GB of disk, no network. The disk is a tmpfs
# (memory, charged to the machine), so Tunery gives less of it.
TIMEOUT_S = 120.0
MEMORY_BYTES = 2 * 1024**3
DISK_BYTES = 64 * 1024**2
MAX_THREADS = 16  # threads the user code may run at once (it may start no process)
MAX_OPEN_FILES = 64
MAX_RESULT_BYTES = 64 * 1024  # one answer line; more is the user code writing garbage on the result descriptor

# Import names the user code may import, when installed beside Tunery: OpenAI's grader image offers these (and a few
# heavy ones Tunery does not ship), with what they import. Any other package is unreadable from the sandbox.
ALLOWED_IMPORTS = (
    "numpy",
    "scipy",
    "sympy",
    "mpmath",
    "pandas",
    "dateutil",
    "pytz",
    "tzdata",
    "six",
    "rapidfuzz",
    "sklearn",
    "joblib",
    "threadpoolctl",
    "rouge_score",
    "absl",
    "nltk",
    "regex",
    "click",
    "tqdm",
    "deepdiff",
    "orderly_set",
    "jsonschema",
    "jsonschema_specifications",
    "referencing",
    "rpds",
    "attr",
    "attrs",
    "pydantic",
    "pydantic_core",
    "typing_extensions",
    "annotated_types",
    "typing_inspection",
    "yaml",
    "sqlparse",
)
SYSTEM_LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use: ``timeout_s`` of wall-clock time per sample, ``cpu_s`` CPU seconds in all,
    ``memory_bytes`` of address space, a directory of ``disk_bytes`` (also the largest file) and :data:`MAX_FILES`
    files, ``threads`` threads (and no process), ``open_files`` descriptors."""

    timeout_s: float = TIMEOUT_S
    cpu_s: int = int(TIMEOUT_S)
    memory_bytes: int = MEMORY_BYTES
    disk_bytes: int = DISK_BYTES
    threads: int = MAX_THREADS
    open_files: int = MAX_OPEN_FILES

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:  # a tmpfs of size 0 would have no bound
                raise ValueError(f"Limits.{name} must be positive, not {value}")


DEFAULT_LIMITS = Limits()


@dataclass
class Outcome:
    """What one ``grade(sample, item)`` gave: a ``reward``, or ``error`` (the user code's fault: it raised, returned a
    non-number, ran out of time or memory, died), or ``server_error`` (the sandbox itself failed)."""

    reward: float | None = None
    error: str | None = None
    server_error: str | None = None


class SandboxUnavailable(RuntimeError):
    """No isolated process can be made on this machine; the message names what is missing."""


@dataclass
class _Run:
    outcomes: list[Outcome] = field(default_factory=list)
    failure: Outcome | None = None  # the outcome of the sample it stopped at, when it stopped before the last
    loaded: bool = False  # the source ran: a failure after it is one sample's


# ---- the parent ---------------------------------------------------------------------------------------------------
def run_python(source: str, sample: Any, item: Any, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """``grade(sample, item)`` of ``source``, run in a sandbox; :class:`SandboxUnavailable` when none can be made."""
    return run_python_batch(source, [(sample, item)], limits)[0]


def run_python_batch(source: str, pairs: list[tuple[Any, Any]], limits: Limits = DEFAULT_LIMITS) -> list[Outcome]:
    """``grade(sample, item)`` of ``source`` for each pair, in one sandbox process (its start-up paid once; the pairs
    share its memory and files, as one grader's calls do). Each pair has ``limits.timeout_s``; after a pair that
    times out or crashes the process, the rest run in a fresh sandbox."""
    missing = unavailable()
    if missing:
        raise SandboxUnavailable(missing)
    return _batch(source, pairs, limits, mode() or sandbox_child.NAMESPACES)


def _batch(source: str, pairs: list[tuple[Any, Any]], limits: Limits, mode: str) -> list[Outcome]:
    outcomes: list[Outcome] = []
    while len(outcomes) < len(pairs):
        run = _run_once(source, pairs[len(outcomes) :], limits, mode)
        outcomes += run.outcomes
        if len(outcomes) >= len(pairs):
            break
        failure = run.failure or Outcome(server_error="the sandbox stopped without saying why")
        if failure.error is None or not run.loaded:
            # the sandbox could not start, or the source itself hangs or crashes when run: so it would for every pair
            outcomes += [failure] * (len(pairs) - len(outcomes))
        else:
            outcomes.append(failure)
    return outcomes


MODES = (sandbox_child.NAMESPACES, sandbox_child.CONTAINED)


def unavailable() -> str | None:
    """Why no sandbox can be made here (None: it can)."""
    return _choice()[1]


def mode() -> str | None:
    """How the sandbox is made here (``namespaces`` or ``contained``), None when it cannot be."""
    return _choice()[0]


@cache
def _choice() -> tuple[str | None, str | None]:
    """(the way a sandbox is made here, or None; why none can be), found once by running a trivial grader in each
    way ``TUNERY_SANDBOX`` allows, in :data:`MODES`' order, until one works."""
    wanted = os.environ.get("TUNERY_SANDBOX", "auto")
    if wanted not in ("auto", *MODES):
        return None, f"TUNERY_SANDBOX is {wanted!r}: auto, {' or '.join(MODES)}"
    if sys.platform != "linux":
        return None, f"the python grader's sandbox needs Linux (Landlock, seccomp); this is {sys.platform}"
    if not sys.executable:
        return None, "the python grader's sandbox needs the path of the Python interpreter, which is unknown"
    if sandbox_child.seccomp_arch() is None:
        return None, f"the python grader's sandbox knows no seccomp filter for {os.uname().machine}"
    abi = sandbox_child.landlock_abi()
    if abi < 1:
        return (
            None,
            "the python grader's sandbox needs Landlock (Linux 5.13 or later, with landlock in the LSMs): it is off",
        )
    failures = []
    for candidate in MODES if wanted == "auto" else (wanted,):
        try:
            got = _batch(TRIVIAL, [({}, {})], Limits(timeout_s=30, cpu_s=30), candidate)[0]
        except OSError as e:
            return None, f"the python grader's sandbox could not be started: {e}"
        if got.reward == 0.5:
            return candidate, None
        failures.append(f"{candidate}: {got.server_error or got.error}")
    return None, f"the python grader's sandbox does not work on this machine ({'; '.join(failures)})"


TRIVIAL = "def grade(sample, item):\n    return 0.5\n"


def _config(workdir: str, limits: Limits, mode: str) -> dict[str, Any]:
    read, imports = _readable()
    return {
        "mode": mode,
        "workdir": workdir,
        "read": read,
        "imports": imports,
        "limits": asdict(limits),
        "uid": os.getuid(),
        "gid": os.getgid(),
    }


@cache
def _readable() -> tuple[list[str], dict[str, list[Any]]]:
    """What the sandbox may read (the standard library, the system's libraries, the allowed packages), and where
    each allowed package is."""
    import importlib.util
    import sysconfig

    read = [sysconfig.get_path("stdlib"), os.path.dirname(os.__file__), os.path.dirname(json.__file__)]
    read += [os.path.dirname(m.__file__) for m in (contextlib, selectors) if m.__file__]
    dynload = os.path.join(sysconfig.get_path("stdlib"), "lib-dynload")
    read += [dynload, os.path.realpath(dynload), *SYSTEM_LIBRARY_DIRS]
    imports: dict[str, list[Any]] = {}
    site_dirs = set()
    for name in ALLOWED_IMPORTS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
            continue
        locations = list(spec.submodule_search_locations or [])
        imports[name] = [spec.origin, locations or None]
        read += locations or [spec.origin]
        site_dirs.add(os.path.dirname(locations[0] if locations else spec.origin))
    for site in site_dirs:  # the shared libraries wheels vendor (numpy.libs, scipy.libs)
        with contextlib.suppress(OSError):
            read += [os.path.join(site, d) for d in os.listdir(site) if d.endswith(".libs")]
    return sorted({os.path.realpath(p) for p in read if p} | {p for p in read if p}), imports


def _run_once(source: str, pairs: list[tuple[Any, Any]], limits: Limits, mode: str) -> _Run:
    run = _Run()
    # One line: contained, the child reads it up to its newline and then the go bytes on the same pipe.
    request = json.dumps({"source": source, "pairs": [[s, i] for s, i in pairs]}, ensure_ascii=False).encode() + b"\n"
    workdir = tempfile.mkdtemp(prefix="tunery-grader-")
    try:
        os.chmod(workdir, 0o700)
        env = {
            "LANG": "C.UTF-8",
            "HOME": workdir,
            "TMPDIR": workdir,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",  # a thread's arena reserves 64 MiB of address space otherwise
        }
        argv = [sys.executable, "-I", "-S", "-B", "-X", "utf8", os.path.abspath(sandbox_child.__file__)]
        argv.append(json.dumps(_config(workdir, limits, mode)))
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        watch = Watch(workdir if mode == sandbox_child.CONTAINED else None, proc.pid, limits.disk_bytes)
        try:
            _talk(proc, request, len(pairs), limits, run, watch)
        finally:
            _kill(proc)
    finally:
        remove_tree(workdir)
    return run


def _talk(proc: subprocess.Popen[bytes], request: bytes, count: int, limits: Limits, run: _Run, watch: Watch) -> None:
    assert proc.stdin and proc.stdout and proc.stderr
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    out, err, sent, ready, stdout_open = b"", b"", 0, False, True
    deadline = time.monotonic() + limits.timeout_s
    while stdout_open and len(run.outcomes) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            run.failure = Outcome(error=f"grade() did not return within {limits.timeout_s:g} s: it was killed")
            return
        over = watch.due()
        if over:
            run.failure = Outcome(error=over)
            return
        for key, _ in sel.select(watch.wait(left)):
            if key.fileobj is proc.stdin:
                try:
                    sent += os.write(proc.stdin.fileno(), request[sent : sent + 65536])
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    sent = len(request)  # it died: its status says why
                if sent >= len(request):
                    sel.unregister(proc.stdin)
                    if not watch.measures:  # contained, the pipe carries the go between samples
                        proc.stdin.close()
            elif key.fileobj is proc.stderr:
                chunk = os.read(proc.stderr.fileno(), 65536)
                err = (err + chunk)[:MAX_RESULT_BYTES]
                if not chunk:
                    sel.unregister(proc.stderr)
            else:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    stdout_open = False
                    sel.unregister(proc.stdout)
                elif over := watch.check():  # an answer counts only from a sandbox within its bounds
                    run.failure = Outcome(error=over)
                    return
                out += chunk
                while b"\n" in out:
                    line, out = out.split(b"\n", 1)
                    if not ready:
                        ready = line == b'{"ready": true}'
                        if not ready:
                            run.failure = Outcome(server_error=f"the sandbox answered {line[:200]!r} before starting")
                            return
                        continue
                    if not run.loaded:
                        run.loaded = line == b'{"loaded": true}'
                        if run.loaded:
                            continue
                    run.outcomes.append(_outcome(line))
                    deadline = time.monotonic() + limits.timeout_s
                    if watch.measures and len(run.outcomes) < count:
                        _go(proc)  # measured within its bounds (above): the next sample may run
                if len(out) > MAX_RESULT_BYTES:
                    run.failure = Outcome(error=f"grade()'s process wrote more than {MAX_RESULT_BYTES} bytes of answer")
                    return
    if len(run.outcomes) >= count:
        return
    try:
        status = proc.wait(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        run.failure = Outcome(error=f"grade() did not return within {limits.timeout_s:g} s: it was killed")
        return
    if not ready:
        why = err.decode(errors="replace").strip() or f"its launcher exited with status {status}"
        run.failure = Outcome(server_error=f"the sandbox could not be set up: {why[-MAX_DETAILS_CHARS:]}")
        return
    run.failure = Outcome(error=_death(status, limits, out))


def _go(proc: subprocess.Popen[bytes]) -> None:
    """Let a contained sandbox grade its next sample (it waits for this byte after each answer)."""
    assert proc.stdin is not None
    with contextlib.suppress(BlockingIOError, BrokenPipeError):  # not reading, or dead: its status says why
        os.write(proc.stdin.fileno(), b"g")


def _death(status: int, limits: Limits, out: bytes) -> str:
    """The error of a process that stopped without answering: the launcher's status is the child's (128 + signal);
    contained, the status is the worker's own (minus the signal)."""
    sig = status - 128 if status > 128 else -status if status < 0 else 0
    if sig == signal.SIGXCPU:
        return f"grade() used more than its {limits.cpu_s} s of CPU time: it was killed"
    if sig == signal.SIGKILL:
        return f"grade()'s process was killed (out of memory, {limits.memory_bytes} bytes, or another limit)"
    if sig == signal.SIGXFSZ:
        return f"grade() wrote a file larger than {limits.disk_bytes} bytes: it was killed"
    if sig:
        return f"grade()'s process died of signal {signal.Signals(sig).name}"
    tail = out.decode(errors="replace")[-200:]
    return f"grade()'s process exited (status {status}) without an answer" + (f": {tail!r}" if tail else "")


def _outcome(line: bytes) -> Outcome:
    """One answer line, checked again here: the user code may have written it."""
    try:
        answer = json.loads(line)
    except ValueError:
        return Outcome(error=f"grade()'s process answered something that is not JSON: {line[:200]!r}")
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return Outcome(error=answer["error"][-MAX_DETAILS_CHARS:])
    reward = answer.get("reward") if isinstance(answer, dict) else None
    if isinstance(reward, int | float) and not isinstance(reward, bool):
        problem = bad_number(float(reward))
        return Outcome(error=problem) if problem else Outcome(reward=float(reward))
    return Outcome(error=f"grade()'s process answered {line[:200]!r}, not a reward")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The launcher's group, killed: the launcher's death kills the PID namespace's first process, and with it every
    process in it."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
