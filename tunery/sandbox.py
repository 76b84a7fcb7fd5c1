"""Untrusted Python, run in an isolated process: the sandbox of OpenAI's ``python`` grader (tunery/graders.py,
docs/graders.md). Linux only; standard library only, since this file is also the sandbox's own program.

The parent (:func:`run_python`, :func:`run_python_batch`) starts ``<this interpreter> -I -S -B <this file> <config>``
with an almost empty environment, its stdio on pipes, every other file descriptor closed, a new session (its own
process group) and a fresh empty directory as its working directory. That process, before any user code exists in it:

1. enters new user, network, mount, PID, IPC and UTS namespaces (``unshare(2)`` through libc). The network namespace
   has one loopback interface, down: no address, local or remote, can be reached, nor can a name be resolved.
2. mounts a private tmpfs of ``disk_bytes`` on its working directory (the parent sees that directory stay empty, and
   nothing is left behind: the mount dies with the namespace), and forks the PID namespace's init, which forks the
   worker and waits for it. When the worker exits, init exits; when the parent kills the launcher, init dies
   (``PR_SET_PDEATHSIG``); when init dies, the kernel kills every process left in the namespace.
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

The parent gives each sample ``timeout_s`` of wall-clock time (from the previous answer, or the start), kills the
whole sandbox when it is spent, caps what it reads, and starts a fresh sandbox for the samples left after a timeout
or a crash. :func:`unavailable` says, once per process, why no sandbox can be made on this machine (no user
namespaces, no Landlock, not Linux...): graders are then refused, never run without isolation.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import platform
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

# What OpenAI documents for its python grader: 2 minutes, 2 GB of memory, 1 GB of disk, no network. The disk is a tmpfs
# (memory, charged to the machine), so Tunery gives less of it.
TIMEOUT_S = 120.0
MEMORY_BYTES = 2 * 1024**3
DISK_BYTES = 64 * 1024**2
MAX_THREADS = 16  # threads the user code may run at once (it may start no process)
MAX_OPEN_FILES = 64
MAX_RESULT_BYTES = 64 * 1024  # one answer line; more is the user code writing garbage on the result descriptor
MAX_DETAILS_CHARS = 4000  # of an error's details (a traceback, the end of what the code printed)
MAX_MAGNITUDE = 1e15  # as tunery/graders.py's formulas

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
SETUP_FAILED = 70  # the launcher's exit status when it could not build the sandbox (its stderr says why)


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use: ``timeout_s`` of wall-clock time per sample, ``cpu_s`` CPU seconds in all,
    ``memory_bytes`` of address space, a tmpfs of ``disk_bytes`` (also the largest file), ``threads`` threads (and no
    process), ``open_files`` descriptors."""

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
    return _batch(source, pairs, limits)


def _batch(source: str, pairs: list[tuple[Any, Any]], limits: Limits) -> list[Outcome]:
    outcomes: list[Outcome] = []
    while len(outcomes) < len(pairs):
        run = _run_once(source, pairs[len(outcomes) :], limits)
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


@cache
def unavailable() -> str | None:
    """Why no sandbox can be made here (None: it can), found once by running a trivial grader in one."""
    if sys.platform != "linux":
        return f"the python grader's sandbox needs Linux (user namespaces and Landlock); this is {sys.platform}"
    if not sys.executable:
        return "the python grader's sandbox needs the path of the Python interpreter, which is unknown"
    if _arch() is None:
        return f"the python grader's sandbox knows no seccomp filter for {platform.machine()}"
    abi = _landlock_abi()
    if abi < 1:
        return "the python grader's sandbox needs Landlock (Linux 5.13 or later, with landlock in the LSMs): it is off"
    try:
        got = _batch("def grade(sample, item):\n    return 0.5\n", [({}, {})], Limits(timeout_s=30, cpu_s=30))[0]
    except OSError as e:
        return f"the python grader's sandbox could not be started: {e}"
    if got.reward == 0.5:
        return None
    return f"the python grader's sandbox does not work on this machine: {got.server_error or got.error}"


def _config(workdir: str, limits: Limits) -> dict[str, Any]:
    read, imports = _readable()
    return {
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
    read += [os.path.dirname(m.__file__) for m in (ctypes, selectors) if m.__file__]
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


def _run_once(source: str, pairs: list[tuple[Any, Any]], limits: Limits) -> _Run:
    run = _Run()
    request = json.dumps({"source": source, "pairs": [[s, i] for s, i in pairs]}, ensure_ascii=False).encode()
    with tempfile.TemporaryDirectory(prefix="tunery-grader-") as workdir:
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
        argv = [sys.executable, "-I", "-S", "-B", "-X", "utf8", os.path.abspath(__file__)]
        argv.append(json.dumps(_config(workdir, limits)))
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
        try:
            _talk(proc, request, len(pairs), limits, run)
        finally:
            _kill(proc)
    return run


def _talk(proc: subprocess.Popen[bytes], request: bytes, count: int, limits: Limits, run: _Run) -> None:
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
        for key, _ in sel.select(left):
            if key.fileobj is proc.stdin:
                try:
                    sent += os.write(proc.stdin.fileno(), request[sent : sent + 65536])
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    sent = len(request)  # it died: its status says why
                if sent >= len(request):
                    sel.unregister(proc.stdin)
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


def _death(status: int, limits: Limits, out: bytes) -> str:
    """The error of a process that stopped without answering: the launcher's status is the child's (128 + signal)."""
    sig = status - 128 if status > 128 else 0
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
        problem = _bad_number(float(reward))
        return Outcome(error=problem) if problem else Outcome(reward=float(reward))
    return Outcome(error=f"grade()'s process answered {line[:200]!r}, not a reward")


def _bad_number(x: float) -> str | None:
    if not math.isfinite(x):
        return f"grade() returned {x}: a reward is a finite number"
    if abs(x) > MAX_MAGNITUDE:
        return f"grade() returned {x:g}: a reward is within ±{MAX_MAGNITUDE:g}"
    return None


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


# ---- the kernel's interfaces, through libc (Python 3.11's os has no unshare) ----------------------------------------
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NEW_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2

# Landlock (include/uapi/linux/landlock.h); its system calls have one number on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ABI1 = (1 << 13) - 1  # execute, write, read, read_dir, remove and make of every kind
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _landlock_abi() -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return int(libc.syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


# Seccomp: per architecture, its audit number, the calls refused outright, socket and socketpair (refused for Unix
# domain sockets: a network namespace does not hide a socket file such as a container runtime's), clone (a thread
# only: no new process, no namespace; RLIMIT_NPROC does not bind root, this does) and clone3 (ENOSYS, so that libc
# falls back to clone), and where a 32-bit ABI hides.
_SECCOMP_ARCH: dict[str, dict[str, Any]] = {
    "x86_64": {
        "audit": 0xC000003E,
        # fork, vfork, ptrace, mount, umount2, pivot_root, unshare, setns, keyctl, add_key, request_key, bpf,
        # userfaultfd, perf_event_open, io_uring_setup/enter/register
        "refused": (57, 58, 101, 165, 166, 155, 272, 308, 250, 248, 249, 321, 323, 298, 425, 426, 427),
        "socket": (41, 53),
        "clone": 56,
        "clone3": 435,
        "x32": 0x40000000,
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "refused": (117, 40, 39, 41, 97, 268, 219, 217, 218, 280, 282, 241, 425, 426, 427),
        "socket": (198, 199),
        "clone": 220,
        "clone3": 435,
        "x32": None,
    },
}


def _arch() -> dict[str, Any] | None:
    return _SECCOMP_ARCH.get(platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64"))


def _seccomp_program(arch: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """A classic BPF filter: (code, jump if true, jump if false, k)."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    af_unix = 1
    # Instructions with symbolic targets, resolved below.
    code: list[tuple[int, Any, Any, int]] = [(ld, 0, 0, 4), (jeq, 0, "kill", arch["audit"]), (ld, 0, 0, 0)]
    if arch["x32"] is not None:
        code.append((jge, "deny", 0, arch["x32"]))
    code += [(jeq, "deny", 0, nr) for nr in arch["refused"]]
    code += [(jeq, "family", 0, nr) for nr in arch["socket"]]
    code += [(jeq, "nosys", 0, arch["clone3"]), (jeq, "clone", 0, arch["clone"]), (ret, 0, 0, allow)]
    labels = {"family": len(code)}
    code += [(ld, 0, 0, 16), (jeq, "deny", 0, af_unix), (ret, 0, 0, allow)]
    labels["clone"] = len(code)
    code += [(ld, 0, 0, 16), (jset, "deny", 0, NEW_NAMESPACES), (jset, 0, "deny", CLONE_THREAD), (ret, 0, 0, allow)]
    labels["deny"] = len(code)
    code.append((ret, 0, 0, eperm))
    labels["nosys"] = len(code)
    code.append((ret, 0, 0, enosys))
    labels["kill"] = len(code)
    code.append((ret, 0, 0, kill))

    def target(at: int, jump: Any) -> int:
        return labels[jump] - at - 1 if isinstance(jump, str) else jump

    return [(c, target(i, jt), target(i, jf), k) for i, (c, jt, jf, k) in enumerate(code)]


# ---- the sandbox (this file run as a program, by the parent above) ------------------------------------------------
def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _isolate(libc: ctypes.CDLL, config: dict[str, Any]) -> None:
    """Namespaces and the tmpfs: step 1 and 2 of the module's list."""
    _check(libc.unshare(NEW_NAMESPACES), "unshare(user, network, mount, PID, IPC, UTS, cgroup namespaces)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{config['uid']} {config['uid']} 1")
    _write("/proc/self/gid_map", f"{config['gid']} {config['gid']} 1")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")
    size = config["limits"]["disk_bytes"]
    data = f"size={size},nr_inodes=4096,mode=0700".encode()
    workdir = config["workdir"].encode()
    _check(libc.mount(b"tmpfs", workdir, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, data), "mount(tmpfs)")
    os.chdir(config["workdir"])
    _check(libc.sethostname(b"sandbox", 7), "sethostname")


def _limit(config: dict[str, Any]) -> None:
    import resource

    limits = config["limits"]
    cpu = max(1, int(limits["cpu_s"]))
    for which, value in (
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"])),
        (resource.RLIMIT_FSIZE, (limits["disk_bytes"], limits["disk_bytes"])),
        (resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"])),
        # tasks of this user in this user namespace: the launcher, init, and the worker's threads (not for root, whom
        # the kernel exempts: the address space bounds them then)
        (resource.RLIMIT_NPROC, (limits["threads"] + 2, limits["threads"] + 2)),
    ):
        resource.setrlimit(which, value)


def _seccomp(libc: ctypes.CDLL) -> None:
    arch = _arch()
    if arch is None:
        raise OSError(f"no seccomp filter for {platform.machine()}")

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    program = _seccomp_program(arch)
    filters = (Filter * len(program))(*[Filter(*instruction) for instruction in program])
    prog = Program(len(program), filters)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def _landlock(libc: ctypes.CDLL, config: dict[str, Any]) -> None:
    """Read-only the paths of ``config['read']``, read-write the work dir; nothing else, from now on."""
    libc.syscall.restype = ctypes.c_long
    abi = _landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    fs = FS_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(
        handled_access_fs=fs,
        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _check(
        libc.syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    file_rights |= FS_IOCTL_DEV if abi >= 5 else 0

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # not on this machine
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = _PathBeneathAttr(allowed_access=rights & fs, parent_fd=fd)
            _check(
                libc.syscall(
                    ctypes.c_long(SYS_LANDLOCK_ADD_RULE), ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
                ),
                f"landlock_add_rule({path})",
            )
        finally:
            os.close(fd)

    for path in config["read"]:
        allow(path, FS_READ_FILE | FS_READ_DIR)
    allow("/dev/null", FS_READ_FILE | FS_WRITE_FILE)
    allow("/dev/urandom", FS_READ_FILE)
    allow(config["workdir"], fs & ~FS_EXECUTE)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    _check(libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """The capabilities the new user namespace gave: none left."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")


class _AllowedImports:
    """A finder of the allowed packages at the places the parent found them (the folders that hold them cannot be
    listed from the sandbox, so the standard path finder would not see them)."""

    def __init__(self, table: dict[str, list[Any]]):
        self.table = table

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        import importlib.util

        entry = self.table.get(name)
        if entry is None:
            return None
        origin, locations = entry
        return importlib.util.spec_from_file_location(name, origin, submodule_search_locations=locations)


def _describe(e: BaseException) -> str:
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None))
    return text[-MAX_DETAILS_CHARS:]


def _printed() -> str:
    try:
        with open("output.log", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 1000))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _grade(answer: int, request: dict[str, Any]) -> None:
    """Run the source and grade each pair, one answer line each on ``answer``."""

    def send(obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(answer, data) :]

    def failed(what: str, e: BaseException) -> dict[str, Any]:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        printed = _printed()
        tail = f"\n(the end of what it printed: {printed!r})" if printed else ""
        return {"error": f"{what}: {_describe(e)}{tail}"[-MAX_DETAILS_CHARS:]}

    namespace: dict[str, Any] = {"__name__": "grader"}
    try:
        exec(compile(request["source"], "grader.py", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source defines no function grade(sample, item)")
        send({"loaded": True})
    except BaseException as e:
        fatal = failed("the source failed to run", e)
        for _ in request["pairs"]:
            send(fatal)
        return
    import numbers

    for sample, item in request["pairs"]:
        try:
            value = grade(sample, item)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"grade() returned {type(value).__name__} {str(value)[:100]!r}, not a number")
            reward = float(value)
            problem = _bad_number(reward)
            if problem:
                raise ValueError(problem)
            send({"reward": reward})
        except BaseException as e:
            send(failed("grade() failed", e))


def _wait_for(pid: int) -> None:
    """In the parent of ``pid``: wait for it, and exit with its status (128 + the signal that killed it)."""
    if pid == 0:
        return
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def _sandbox_main(config: dict[str, Any]) -> None:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    try:
        _isolate(libc, config)
    except OSError as e:
        sys.stderr.write(f"{e}\n")
        os._exit(SETUP_FAILED)
    _wait_for(os.fork())  # the launcher waits for the PID namespace's first process (init)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
    _wait_for(os.fork())  # init waits for the worker: the kernel ignores the signals init does not handle
    answer, report = os.dup(1), os.dup(2)  # the answer's descriptor; the parent's stderr, until set up
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
        _limit(config)
        log = os.open("output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # what the user code prints
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        keep = sorted({0, 1, 2, answer, report})
        for low, high in zip(keep, [*keep[1:], 1 << 16], strict=True):
            os.closerange(low + 1, high)
        _landlock(libc, config)
        _seccomp(libc)
        _drop_capabilities(libc)
    except OSError as e:
        os.write(report, f"{e}\n".encode())
        os._exit(SETUP_FAILED)
    os.close(report)
    sys.meta_path.append(_AllowedImports(config["imports"]))
    os.write(answer, b'{"ready": true}\n')
    request = json.loads(sys.stdin.buffer.read())
    _grade(answer, request)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _sandbox_main(json.loads(sys.argv[1]))
