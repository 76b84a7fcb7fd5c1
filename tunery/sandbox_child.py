"""The sandbox's own program (``python -I -S -B sandbox_child.py <config>``, started by tunery/sandbox.py, whose
docstring says what it does), and the kernel interfaces it uses, through libc: Python 3.11's ``os`` has no
``unshare``. It imports as little as it can (no ``typing``, ``dataclasses``, ``subprocess``, ``ctypes.util``): each
import is paid on every sandbox's start."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import sys

TYPE_CHECKING = False  # typing's own costs an import; mypy takes any TYPE_CHECKING as true
if TYPE_CHECKING:
    from typing import Any

MAX_DETAILS_CHARS = 4000  # of an error's details (a traceback, the end of what the code printed)
MAX_MAGNITUDE = 1e15  # as tunery/graders/'s formulas
# Files in a sandbox's directory (each name, folders and links included, the directory itself and the log of what the
# user code prints among them): its tmpfs's inodes, or what the parent counts when contained.
MAX_FILES = 4096
SETUP_FAILED = 70  # the launcher's exit status when it could not build the sandbox (its stderr says why)
# How the sandbox is built (tunery/sandbox.py chooses): in namespaces of its own, or, where user namespaces are refused
# (a container under its runtime's default seccomp profile: a Kubernetes pod), contained by Landlock, seccomp and
# resource limits alone.
NAMESPACES, CONTAINED = "namespaces", "contained"


def bad_number(x: float) -> str | None:
    if not math.isfinite(x):
        return f"grade() returned {x}: a reward is a finite number"
    if abs(x) > MAX_MAGNITUDE:
        return f"grade() returned {x:g}: a reward is within ±{MAX_MAGNITUDE:g}"
    return None


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


def libc() -> ctypes.CDLL:
    """libc's functions, from the interpreter's own symbols."""
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def landlock_abi() -> int:
    c = libc()
    c.syscall.restype = ctypes.c_long
    return int(c.syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


# Seccomp: per architecture, its audit number, the calls refused outright, socket and socketpair (refused for Unix
# domain sockets: a network namespace does not hide a socket file such as a container runtime's; for every family
# when contained, without a network namespace), the calls refused when contained, clone (a thread only: no new
# process, no namespace; RLIMIT_NPROC does not bind root, this does) and clone3 (ENOSYS, so that libc falls back to
# clone), and where a 32-bit ABI hides.
_SECCOMP_ARCH: dict[str, dict[str, Any]] = {
    "x86_64": {
        "audit": 0xC000003E,
        # fork, vfork, ptrace, mount, umount2, pivot_root, unshare, setns, keyctl, add_key, request_key, bpf,
        # userfaultfd, perf_event_open, io_uring_setup/enter/register
        "refused": (57, 58, 101, 165, 166, 155, 272, 308, 250, 248, 249, 321, 323, 298, 425, 426, 427),
        "socket": (41, 53),
        # refused too when contained (no PID namespace hides the other processes of its user): kill, tkill, tgkill,
        # rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_send_signal, pidfd_open, process_vm_readv/writev, kcmp
        "contained": (62, 200, 234, 129, 297, 424, 434, 310, 311, 312),
        "clone": 56,
        "clone3": 435,
        "x32": 0x40000000,
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "refused": (117, 40, 39, 41, 97, 268, 219, 217, 218, 280, 282, 241, 425, 426, 427),
        "socket": (198, 199),
        "contained": (129, 130, 131, 138, 240, 424, 434, 270, 271, 272),
        "clone": 220,
        "clone3": 435,
        "x32": None,
    },
}


def seccomp_arch() -> dict[str, Any] | None:
    return _SECCOMP_ARCH.get(os.uname().machine.lower().replace("arm64", "aarch64").replace("amd64", "x86_64"))


def _seccomp_program(arch: dict[str, Any], contained: bool = False) -> list[tuple[int, int, int, int]]:
    """A classic BPF filter: (code, jump if true, jump if false, k)."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    af_unix = 1
    # Instructions with symbolic targets, resolved below.
    code: list[tuple[int, Any, Any, int]] = [(ld, 0, 0, 4), (jeq, 0, "kill", arch["audit"]), (ld, 0, 0, 0)]
    if arch["x32"] is not None:
        code.append((jge, "deny", 0, arch["x32"]))
    code += [(jeq, "deny", 0, nr) for nr in (*arch["refused"], *(arch["contained"] if contained else ()))]
    code += [(jeq, "deny" if contained else "family", 0, nr) for nr in arch["socket"]]
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


# ---- the sandbox --------------------------------------------------------------------------------------------------
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
    data = f"size={size},nr_inodes={MAX_FILES},mode=0700".encode()
    workdir = config["workdir"].encode()
    _check(libc.mount(b"tmpfs", workdir, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, data), "mount(tmpfs)")
    os.chdir(config["workdir"])
    _check(libc.sethostname(b"sandbox", 7), "sethostname")


def _limit(config: dict[str, Any], contained: bool) -> None:
    import resource

    limits = config["limits"]
    cpu = max(1, int(limits["cpu_s"]))
    tasks = limits["threads"] + 2
    for which, value in (
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"])),
        (resource.RLIMIT_FSIZE, (limits["disk_bytes"], limits["disk_bytes"])),
        (resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"])),
        # tasks of this user in this user namespace: the launcher, init, and the worker's threads (not for root, whom
        # the kernel exempts: the address space bounds them then). Contained, the user's tasks are the whole
        # container's (the trainer's threads among them): the address space alone bounds the threads.
        *(() if contained else ((resource.RLIMIT_NPROC, (tasks, tasks)),)),
    ):
        resource.setrlimit(which, value)


def _seccomp(libc: ctypes.CDLL, contained: bool) -> None:
    arch = seccomp_arch()
    if arch is None:
        raise OSError(f"no seccomp filter for {os.uname().machine}")

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    program = _seccomp_program(arch, contained)
    filters = (Filter * len(program))(*[Filter(*instruction) for instruction in program])
    prog = Program(len(program), filters)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def _landlock(libc: ctypes.CDLL, config: dict[str, Any]) -> None:
    """Read-only the paths of ``config['read']``, read-write the work dir; nothing else, from now on."""
    libc.syscall.restype = ctypes.c_long
    abi = landlock_abi()
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


def _grade(answer: int, request: dict[str, Any], go: int | None = None) -> None:
    """Run the source and grade each pair, one answer line each on ``answer``; with ``go`` (contained), wait after
    each answer but the last for the parent's byte on it: the parent measures the directory in between, so what it
    finds over the bounds is the answered sample's doing, not the next one's."""

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

    for i, (sample, item) in enumerate(request["pairs"]):
        if i and go is not None and not os.read(go, 1):
            return  # the parent is gone, or stopped the sandbox
        try:
            value = grade(sample, item)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"grade() returned {type(value).__name__} {str(value)[:100]!r}, not a number")
            reward = float(value)
            problem = bad_number(reward)
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


def main(config: dict[str, Any]) -> None:
    c = libc()
    c.syscall.restype = ctypes.c_long
    contained = config.get("mode") == CONTAINED
    if not contained:  # contained, the process the parent started is the worker: its working directory is set
        try:
            _isolate(c, config)
        except OSError as e:
            sys.stderr.write(f"{e}\n")
            os._exit(SETUP_FAILED)
        _wait_for(os.fork())  # the launcher waits for the PID namespace's first process (init)
        _check(c.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
        _wait_for(os.fork())  # init waits for the worker: the kernel ignores the signals init does not handle
    answer, report = os.dup(1), os.dup(2)  # the answer's descriptor; the parent's stderr, until set up
    go = os.dup(0) if contained else None  # contained: the request, then the parent's go between samples
    try:
        _check(c.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
        _limit(config, contained)
        log = os.open("output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # what the user code prints
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        keep = sorted({0, 1, 2, answer, report, *([go] if go is not None else [])})
        for low, high in zip(keep, [*keep[1:], 1 << 16], strict=True):
            os.closerange(low + 1, high)
        _landlock(c, config)
        _seccomp(c, contained)
        _drop_capabilities(c)
    except OSError as e:
        os.write(report, f"{e}\n".encode())
        os._exit(SETUP_FAILED)
    os.close(report)
    sys.meta_path.append(_AllowedImports(config["imports"]))
    os.write(answer, b'{"ready": true}\n')
    if go is None:
        request = json.loads(sys.stdin.buffer.read())
    else:  # one line (JSON has no raw newline), the pipe kept open for the go bytes
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(go, 1 << 16)
            if not chunk:
                break
            line += chunk
        request = json.loads(line)
    _grade(answer, request, go)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
