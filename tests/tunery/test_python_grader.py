"""OpenAI's ``python`` grader, run by tunery/sandbox.py: graders from OpenAI's documentation give their rewards, and
every escape the sandbox must stop is tried (files, the parent's environment, the network, time, memory, processes,
disk), each failing in its own way. Short limits keep the file fast. Every test runs in both of the sandbox's ways:
in namespaces of its own, and contained (where a container refuses user namespaces: a Kubernetes pod)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tunery import graders as g
from tunery import sandbox, sandbox_dir
from tunery.graders import GraderNotRunnable, parse_grader
from tunery.sandbox import Limits, Outcome

MISSING = sandbox.unavailable()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no sandbox on this machine: {MISSING}")

FAST = Limits(timeout_s=2.0, cpu_s=2, memory_bytes=512 * 1024**2, disk_bytes=8 * 1024**2, threads=8)


@pytest.fixture(autouse=True, params=sandbox.MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The way the sandboxes of the test are made (both work on this machine: the module is skipped otherwise)."""
    chosen: str = request.param
    monkeypatch.setattr(sandbox, "mode", lambda: chosen)
    return chosen


def namespaced(mode: str) -> bool:
    return mode == sandbox.sandbox_child.NAMESPACES


def run(body: str, sample: Any = None, item: Any = None, limits: Limits = FAST) -> Outcome:
    """``body`` as the body of ``grade(sample, item)`` (or a whole source, when it defines grade)."""
    source = body if "def grade" in body else "def grade(sample, item):\n" + _indent(body)
    return sandbox.run_python(source, {} if sample is None else sample, {} if item is None else item, limits)


def _indent(body: str) -> str:
    return "".join("    " + line + "\n" for line in body.strip("\n").splitlines())


def failed(outcome: Outcome, *words: str) -> str:
    assert outcome.reward is None and outcome.server_error is None, outcome
    assert outcome.error is not None
    for w in words:
        assert w in outcome.error, (w, outcome.error)
    return outcome.error


def python(source: str) -> g.AnyGrader:
    return parse_grader({"type": "python", "name": "py", "source": source})


# ---- graders that work --------------------------------------------------------------------------------------------
def test_openais_fuzzy_match_example() -> None:
    from rapidfuzz import fuzz, utils

    source = (
        "from rapidfuzz import fuzz, utils\n\n"
        "def grade(sample, item) -> float:\n"
        '    output_text = sample["output_text"]\n'
        '    reference_answer = item["reference_answer"]\n'
        "    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0\n"
    )
    result = g.run_grader(python(source), "The capital is Paris", {"reference_answer": "paris"}, limits=FAST)
    expected = fuzz.WRatio("The capital is Paris", "paris", processor=utils.default_process) / 100.0
    assert not result.metadata.errors.any()
    assert result.reward == pytest.approx(expected) and 0 < result.reward <= 1
    assert (result.metadata.type, result.metadata.name) == ("python", "py")


def test_openais_countdown_example_on_output_json_and_a_reward_above_one() -> None:
    source = """import json
import re

def extract_numbers_from_expression(expression: str):
    return [int(num) for num in re.findall(r'-?\\d+', expression)]

def grade(sample, item) -> float:
    expression_str = sample['output_json']['expression']
    try:
        math_expr_eval = eval(expression_str)
    except Exception:
        return 0
    expr_nums_list = extract_numbers_from_expression(expression_str)
    input_nums_list = [int(x) for x in json.loads(item['nums'])]
    if sorted(expr_nums_list) != sorted(input_nums_list):
        return 0
    sample_result_int = int(sample['output_json']['result'])
    item_result_int = int(item['target'])
    if math_expr_eval != sample_result_int:
        return 1
    if sample_result_int == item_result_int:
        return 5
    if abs(sample_result_int - item_result_int) <= 1:
        return 4
    return 2
"""
    grader = python(source)
    item = {"nums": "[3, 7, 10]", "target": "31"}
    exact = json.dumps({"expression": "3 * 7 + 10", "result": 31})
    assert g.run_grader(grader, exact, item, limits=FAST).reward == 5.0
    close = json.dumps({"expression": "3 * 10 + 7 - 7", "result": 30})
    assert g.run_grader(grader, close, item, limits=FAST).reward == 0.0  # 7 twice: not the item's numbers
    off_by_one = json.dumps({"expression": "3 * 10 - 7 + 7", "result": 30})
    assert g.run_grader(grader, off_by_one, item, limits=FAST).reward == 0.0
    wrong = json.dumps({"expression": "10 * 3 + 7", "result": 36})
    assert g.run_grader(grader, wrong, item, limits=FAST).reward == 1.0


def test_the_sample_and_item_as_openai_gives_them() -> None:
    for text, output_json in (('{"a": [1, 2]}', {"a": [1, 2]}), ("plain text", None), ("", None)):
        expected = {"text": text, "json": output_json, "item": {"label": "é", "n": [1, None]}}
        source = (
            "def grade(sample, item):\n"
            f"    expected = {expected!r}\n"
            "    assert sample['output_text'] == expected['text'], sample\n"
            "    assert sample['output_json'] == expected['json'], sample\n"
            "    assert sample['output_tools'] == [], sample\n"
            "    assert sample['choices'][0]['message'] == {'role': 'assistant', 'content': expected['text']}\n"
            "    assert item == expected['item'], item\n"
            "    return 1.0\n"
        )
        assert g.run_grader(python(source), text, expected["item"], limits=FAST).reward == 1.0
    assert g.python_sample("plain text")["output_json"] is None
    assert g.python_sample('{"a": 1}')["output_json"] == {"a": 1}
    assert run("return len(item['label']) + sample['n']", {"n": 0.5}, {"label": "é"}).reward == 1.5


def test_numpy_and_the_standard_library_may_be_imported_but_not_the_rest() -> None:
    assert run("import numpy as np\nreturn float(np.mean(np.arange(5)))").reward == 2.0
    assert run("import math, re, json, statistics\nreturn statistics.mean([1, 2])").reward == 1.5
    failed(run("import tunery\nreturn 1"), "ModuleNotFoundError", "tunery")
    failed(run("import fastapi\nreturn 1"), "ModuleNotFoundError")


def test_a_batch_grades_in_one_process_and_a_timeout_costs_only_its_sample() -> None:
    source = "def grade(sample, item):\n    while sample['loop']:\n        pass\n    return sample['x']\n"
    pairs: list[tuple[Any, Any]] = [
        ({"loop": False, "x": 1}, {}),
        ({"loop": True, "x": 2}, {}),
        ({"loop": False, "x": 3}, {}),
    ]
    limits = Limits(timeout_s=1.0, cpu_s=5)
    out = sandbox.run_python_batch(source, pairs, limits)
    assert [o.reward for o in out] == [1.0, None, 3.0]
    failed(out[1], "did not return within 1 s")
    # a source that hangs before grade exists fails every pair at once, not one timeout after another
    started = time.monotonic()
    out = sandbox.run_python_batch("while True:\n    pass\n" + source, pairs, limits)
    assert [failed(o, "did not return within 1 s") for o in out] and time.monotonic() - started < 1.75


# ---- what the user code does wrong --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("raise ValueError('no answer here')", ("ValueError: no answer here", 'File "grader.py", line 2')),
        ("return 'high'", ("returned str 'high', not a number",)),
        ("return None", ("returned NoneType",)),
        ("return True", ("returned bool",)),
        ("return [1.0]", ("returned list",)),
        ("return float('nan')", ("returned nan: a reward is a finite number",)),
        ("return float('inf')", ("returned inf",)),
        ("return 1e300", ("a reward is within ±1e+15",)),
        ("import sys\nsys.exit(3)", ("SystemExit: 3",)),
        ("print('garbage ' * 100)\nraise KeyError('k')", ("KeyError: 'k'", "garbage garbage")),
    ],
)
def test_a_failing_grade_is_a_runtime_error_with_details(body: str, words: tuple[str, ...]) -> None:
    result = g.run_grader(python("def grade(sample, item):\n" + _indent(body)), "x", {}, limits=FAST)
    assert result.reward == 0.0
    errors = result.metadata.errors
    assert errors.python_grader_runtime_error and not errors.python_grader_server_error
    assert errors.python_grader_runtime_error_details is not None
    for w in words:
        assert w in errors.python_grader_runtime_error_details, (w, errors.python_grader_runtime_error_details)


def test_source_that_fails_when_run_fails_every_sample() -> None:
    source = "import os\nraise RuntimeError('at import')\ndef grade(s, i): return 1"
    out = sandbox.run_python_batch(source, [(1, 1)] * 2, FAST)
    assert [failed(o, "the source failed to run", "RuntimeError: at import") for o in out]
    failed(sandbox.run_python("grade = 3\n", {}, {}, FAST), "defines no function grade")


def test_printing_is_not_the_answer_but_writing_on_the_answers_descriptor_is_garbage() -> None:
    assert run("print('{\"reward\": 1}')\nprint('garbage', flush=True)\nreturn 0.25").reward == 0.25
    body = "import os, contextlib\nfor fd in range(3, 8):\n"
    body += "    with contextlib.suppress(OSError):\n        os.write(fd, b'garbage\\n')"
    failed(run(body + "\nreturn 0.5"), "not JSON", "garbage")


def test_os_exit_without_an_answer() -> None:
    failed(run("import os\nos._exit(4)"), "exited (status 4) without an answer")


# ---- escapes ------------------------------------------------------------------------------------------------------
def test_it_cannot_read_files_outside_its_directory(mode: str) -> None:
    repo_file = str(Path(__file__).resolve())
    for path in ("/etc/hostname", "/etc/passwd", repo_file, str(Path.home()), "/proc/self/environ", "/proc/1/cmdline"):
        failed(run(f"return len(open({path!r}, 'rb').read())"), "PermissionError")
    failed(run("import os\nreturn len(os.listdir('/'))"), "PermissionError")
    failed(run(f"import os\nreturn len(os.listdir({str(Path(repo_file).parent)!r}))"), "PermissionError")
    # nor through a link made in its own directory: Landlock checks the file a symbolic link leads to
    failed(run("import os\nos.symlink('/etc/hostname', 'h')\nreturn len(open('h').read())"), "PermissionError")
    # a tmpfs; contained, Landlock refuses a link to a file it may not read
    linked = run("import os\nos.link('/etc/hostname', 'h')\nreturn 1")
    failed(linked, "Invalid cross-device link" if namespaced(mode) else "")
    assert namespaced(mode) or "PermissionError" in (linked.error or "") or "cross-device" in (linked.error or "")
    # its own directory is readable and writable, and starts empty but for the log of what it prints
    body = "import os\nopen('x', 'w').write('abc')\nreturn len(open('x').read()) + len(os.listdir('.'))"
    assert run(body).reward == 3 + 2


def test_it_cannot_write_outside_its_directory() -> None:
    with tempfile.TemporaryDirectory() as outside:
        failed(run(f"open({outside + '/pwned'!r}, 'w').write('x')\nreturn 1"), "PermissionError")
        assert os.listdir(outside) == []
    failed(run("open('/tmp/pwned-by-grader', 'w')\nreturn 1"), "PermissionError")
    assert not os.path.exists("/tmp/pwned-by-grader")


def test_it_cannot_see_the_parents_environment(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-the-sandbox-test")
    body = (
        "import os\n"
        "found = [k for k, v in os.environ.items() if 'AWS' in k or 'fake-secret' in v]\n"
        "return float(len(found))"
    )
    assert run(body).reward == 0.0
    failed(run("return float('fake-secret' in open('/proc/self/environ').read())"), "PermissionError")
    if namespaced(mode):
        # alone in its PID namespace: its parent is the namespace's init (1), the launcher above is not even visible
        assert run("import os\nreturn os.getpid() * 10 + os.getppid()").reward == 21.0
    else:  # contained: the processes are visible by number, but not their files (/proc is not readable)
        failed(run(f"return len(open('/proc/{os.getpid()}/environ').read())"), "PermissionError")


def test_it_cannot_reach_the_network(mode: str) -> None:
    # namespaced, its network namespace's loopback is down; contained, seccomp refuses every socket
    unreachable = "Network is unreachable" if namespaced(mode) else "PermissionError"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        body = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nreturn 1"
        failed(run(body), "PermissionError")  # Landlock refuses any TCP connect
        server.settimeout(0.1)
        with pytest.raises(TimeoutError):
            server.accept()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # UDP, which Landlock does not cover
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        body = f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))"
        failed(run(body), unreachable)
        udp.settimeout(0.1)
        with pytest.raises(TimeoutError):
            udp.recv(10)
    failed(run("import socket\nreturn len(socket.getaddrinfo('example.com', 443))"), "gaierror")
    body = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))"
    failed(run(body), unreachable)
    body = "import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'x', ('::1', 53))"
    failed(run(body), "OSError" if namespaced(mode) else "PermissionError")  # namespaced: ::1 is down too


def test_it_cannot_use_unix_sockets() -> None:
    with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX) as server:
        path = os.path.join(d, "s")
        server.bind(path)
        server.listen()
        body = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nreturn 1"
        failed(run(body), "PermissionError")
        failed(run("import socket\nsocket.socketpair()\nreturn 1"), "PermissionError")


def test_an_infinite_loop_is_killed_in_time() -> None:
    limits = Limits(timeout_s=1.0, cpu_s=5)
    for body in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        started = time.monotonic()
        result = g.run_grader(python("def grade(sample, item):\n" + _indent(body)), "x", {}, limits=limits)
        took = time.monotonic() - started
        assert result.reward == 0.0 and result.metadata.errors.python_grader_runtime_error
        assert "did not return within 1 s" in (result.metadata.errors.python_grader_runtime_error_details or "")
        assert 1.0 <= took < 1.0 + 0.75, took


def test_cpu_time_is_bounded_too() -> None:
    failed(run("while True:\n    pass", limits=Limits(timeout_s=10, cpu_s=1)), "more than its 1 s of CPU time")


def _sandbox_processes() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"tunery/sandbox.py" in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def test_nothing_it_starts_outlives_it() -> None:
    """Its threads die with it; a process it might start would be in its PID namespace, killed with it."""
    body = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nreturn 1.0"
    assert run(body).reward == 1.0
    deadline = time.monotonic() + 2
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes() == []


def test_it_cannot_use_more_memory_than_its_limit() -> None:
    failed(run("x = bytearray(600 * 1024 * 1024)\nreturn len(x)"), "MemoryError")
    assert run("x = bytearray(100 * 1024 * 1024)\nreturn len(x) / 2**20").reward == 100.0


def test_it_cannot_start_processes_nor_unbounded_threads() -> None:
    for body in (
        "import os\nos.fork()\nreturn 1",
        "import subprocess\nsubprocess.run(['/bin/true'])\nreturn 1",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()\nreturn 1",
        f"import os\nos.execv({os.path.realpath('/bin/sh')!r}, ['sh'])",
    ):
        failed(run(body), "PermissionError")
    body = (
        "import threading, time\n"
        "started = 0\n"
        "try:\n"
        "    for _ in range(10000):\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        started += 1\n"
        "except RuntimeError:\n"
        "    return started\n"
        "return -1"
    )
    started = run(body).reward
    # FAST.threads for any user but root, whom RLIMIT_NPROC does not bind: 512 MiB of address space bounds it then
    bound = FAST.threads if os.getuid() else 100
    assert started is not None and 0 < started <= bound, started


def test_it_cannot_write_big_files(mode: str) -> None:
    body = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)\nreturn 1"
    failed(run(body), "OSError")
    body = "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 1024 * 1024)\nreturn 1"
    # its tmpfs bounds the whole; contained, the parent measures its directory and kills it
    failed(run(body), "No space left on device" if namespaced(mode) else "wrote more than 8388608 bytes")


SMALL_DISK = dataclasses.replace(FAST, disk_bytes=1024 * 1024)


def over_the_disk(mode: str) -> str:
    return "No space left on device" if namespaced(mode) else "wrote more than 1048576 bytes to its directory"


def test_its_directory_is_bounded_in_total_not_only_per_file(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the sandboxes' directories are made
    # 64 files of 64 KiB: each far under the largest file, together 4 times the directory
    many = "for i in range(64):\n    open(f'f{i}', 'wb').write(b'x' * 65536)\nreturn 1"
    failed(run(many, limits=SMALL_DISK), over_the_disk(mode))
    # files removed but held open still take their room: a tmpfs counts them, and so does the contained measure (32 of
    # them: the sandbox's open files are bounded too)
    hidden = (
        "import os\nkept = []\nfor i in range(32):\n"
        "    f = open(f'f{i}', 'wb')\n    os.unlink(f'f{i}')\n    f.write(b'x' * 65536)\n    f.flush()\n"
        "    kept.append(f)\nimport time\ntime.sleep(0.2)\nreturn 1"
    )
    failed(run(hidden, limits=SMALL_DISK), over_the_disk(mode))
    # under the bound, files come and go as they please; and every sandbox's directory is removed afterwards
    fine = "for i in range(64):\n    open(f'f{i % 8}', 'wb').write(b'x' * 65536)\nreturn len(open('f7', 'rb').read())"
    assert run(fine, limits=SMALL_DISK).reward == 65536
    assert os.listdir(tmp_path) == []


def test_its_files_are_bounded_in_number(mode: str) -> None:
    # 4,000 files, then 1,000 more in the same sandbox (a slow disk takes a millisecond of CPU a file: time is given)
    source = (
        "def grade(sample, item):\n    for i in range(*sample):\n        open(f'f{i}', 'wb').close()\n    return 1\n"
    )
    pairs: list[tuple[Any, Any]] = [([0, 4000], {}), ([4000, 5000], {})]
    within, beyond = sandbox.run_python_batch(source, pairs, dataclasses.replace(FAST, timeout_s=30, cpu_s=30))
    assert within.reward == 1.0
    failed(beyond, "No space left on device" if namespaced(mode) else "made more than 4096 files in its directory")
    # contained, folders nested deeper than the measure goes stop it; a tmpfs takes them
    nested = "import os\nos.makedirs('/'.join(['d'] * sample['n']))\nreturn 1"
    assert run(nested, {"n": sandbox_dir.MAX_DEPTH}).reward == 1.0
    deep = run(nested, {"n": 200})
    assert deep.reward == 1.0 if namespaced(mode) else "nested folders more than 64 deep" in failed(deep)


def test_the_samples_after_one_over_the_bound_are_graded_in_a_fresh_sandbox(mode: str) -> None:
    source = (
        "import os\n"
        "def grade(sample, item):\n"
        "    if sample['fill']:\n"
        "        for i in range(64):\n"
        "            open(f'f{i}', 'wb').write(b'x' * 65536)\n"
        "    open('x', 'w').write('abc')\n"
        "    return len(os.listdir('.'))\n"
    )
    pairs: list[tuple[Any, Any]] = [({"fill": False}, {}), ({"fill": True}, {}), ({"fill": False}, {})]
    first, filled, after = sandbox.run_python_batch(source, pairs, SMALL_DISK)
    assert first.reward == 2.0  # its log and x
    failed(filled, over_the_disk(mode))
    if namespaced(mode):  # the tmpfs refused a write: the same sandbox goes on, with what it could write
        assert after.reward is not None and after.reward > 2.0
    else:  # killed: a fresh sandbox, whose directory is empty again
        assert after.reward == 2.0


def test_a_directory_is_removed_however_deep_and_unreadable_it_was_made(tmp_path: Path) -> None:
    """Contained, the user code's folders stay behind it (1,100 deep is past the recursion of shutil.rmtree)."""
    top = tmp_path / "workdir"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1100):
        os.mkdir("d", dir_fd=fd)
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    (top / "locked").mkdir()
    (top / "locked" / "f").write_text("x")
    (top / "locked").chmod(0)
    try:
        sandbox_dir.remove_tree(str(top))
        left = os.listdir(tmp_path)
    finally:  # never leave pytest a tree its own cleanup cannot remove (it recurses)
        subprocess.run(["rm", "-rf", str(top)], check=False)
    assert left == []


def test_it_cannot_signal_or_trace_outside_processes(mode: str) -> None:
    me = os.getpid()
    # namespaced, no process outside is visible; contained, seccomp refuses every signal and every way to reach one
    refused = "ProcessLookupError" if namespaced(mode) else "PermissionError"
    failed(run(f"import os, signal\nos.kill({me}, signal.SIGTERM)\nreturn 1"), refused)
    failed(run(f"import os, signal\nos.kill(-{os.getpgid(me)}, signal.SIGTERM)\nreturn 1"), "")
    failed(run("import os, signal\nos.kill(-1, signal.SIGTERM)\nreturn 1"), "")
    if not namespaced(mode):
        failed(run(f"import os\nos.pidfd_open({me})\nreturn 1"), "PermissionError")
        body = f"import ctypes\nreturn ctypes.CDLL(None).process_vm_readv({me}, 0, 0, 0, 0, 0)"
        assert run(body).reward == -1
    assert run("import ctypes\nreturn ctypes.CDLL(None).ptrace(16, 1, 0, 0)").reward == -1  # PTRACE_ATTACH refused


def test_it_cannot_make_namespaces_or_mounts() -> None:
    body = (
        "import ctypes\nc = ctypes.CDLL(None)\nreturn c.unshare(0x10000000) * 10 + c.mount(b'n', b'.', b'tmpfs', 0, 0)"
    )
    assert run(body).reward == -11.0  # both -1 (seccomp's EPERM)


# ---- where it cannot run -------------------------------------------------------------------------------------------
def test_refused_where_there_is_no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    grader = python("def grade(sample, item):\n    return 1.0\n")
    monkeypatch.setattr(sandbox, "unavailable", lambda: "Landlock is off")
    with pytest.raises(GraderNotRunnable) as e:
        g.run_grader(grader, "x", {})
    assert (e.value.param, e.value.code) == ("grader.type", "grader_not_supported")
    assert "isolated sandbox" in e.value.message and "Landlock is off" in e.value.message
    multi = parse_grader({"type": "multi", "name": "m", "graders": {"p": grader.model_dump()}, "calculate_output": "p"})
    with pytest.raises(GraderNotRunnable) as e:
        g.run_grader(multi, "x", {})
    assert e.value.param == "grader.graders.p.type"
    with pytest.raises(sandbox.SandboxUnavailable, match="Landlock is off"):
        sandbox.run_python("def grade(s, i): return 1", {}, {})


def test_the_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> str | None:
        return sandbox._choice.__wrapped__()[1]  # type: ignore[attr-defined]

    monkeypatch.setenv("TUNERY_SANDBOX", "chroot")
    assert "TUNERY_SANDBOX is 'chroot'" in (probe() or "")
    monkeypatch.setenv("TUNERY_SANDBOX", "auto")
    monkeypatch.setattr(sandbox.sandbox_child, "landlock_abi", lambda: -1)
    assert "needs Landlock" in (probe() or "")
    monkeypatch.setattr(sandbox.sys, "platform", "darwin")
    assert "needs Linux" in (probe() or "")


def test_the_way_is_chosen_by_the_setting_and_else_namespaces_first(monkeypatch: pytest.MonkeyPatch) -> None:
    choose = sandbox._choice.__wrapped__  # type: ignore[attr-defined]
    for wanted, chosen in (("auto", "namespaces"), ("namespaces", "namespaces"), ("contained", "contained")):
        monkeypatch.setenv("TUNERY_SANDBOX", wanted)
        assert choose() == (chosen, None)
    # where user namespaces are refused (as a pod's RuntimeDefault seccomp profile refuses unshare), auto contains
    real = sandbox._batch

    def no_namespaces(source: str, pairs: Any, limits: Limits, mode: str) -> list[Outcome]:
        if mode == "namespaces":
            return [Outcome(server_error="the sandbox could not be set up: unshare(...): Operation not permitted")]
        return real(source, pairs, limits, mode)

    monkeypatch.setattr(sandbox, "_batch", no_namespaces)
    monkeypatch.setenv("TUNERY_SANDBOX", "auto")
    assert choose() == ("contained", None)
    monkeypatch.setenv("TUNERY_SANDBOX", "namespaces")
    assert "namespaces: the sandbox could not be set up" in (choose()[1] or "")


def test_a_sandbox_that_cannot_be_set_up_is_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_config", lambda workdir, limits, mode: {"workdir": "/nonexistent", "limits": {}})
    result = g.run_grader(python("def grade(sample, item):\n    return 1.0\n"), "x", {}, limits=FAST)
    errors = result.metadata.errors
    assert result.reward == 0.0 and errors.python_grader_server_error and not errors.python_grader_runtime_error
    assert errors.python_grader_server_error_type == "sandbox_error"
    assert any("could not be set up" in p for p in result.problems)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="disk_bytes"):
        Limits(disk_bytes=0)
    assert math.isfinite(sandbox.DEFAULT_LIMITS.timeout_s)


def test_a_batch_of_samples_is_graded_as_one_by_one_in_one_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_graders (a reinforcement step's completions) answers what run_grader answers for each sample, with each
    python grader started once for the batch, also inside a multi grader next to other graders."""
    source = (
        "def grade(sample, item):\n"
        "    if sample['output_text'] == 'boom':\n"
        "        raise ValueError('boom')\n"
        "    return float(item['answer'] in sample['output_text'])\n"
    )
    single = python(source)
    multi = parse_grader(
        {
            "type": "multi",
            "name": "both",
            "graders": {
                "code": {"type": "python", "name": "code", "source": source},
                "same": {
                    "type": "string_check",
                    "name": "same",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                },
            },
            "calculate_output": "code + same",
        }
    )
    samples = ["it is 4", "5", "boom", "4"]
    items = [{"answer": "4"}, {"answer": "4"}, {"answer": "4"}, {"answer": "4"}]
    starts: list[int] = []
    real = sandbox.run_python_batch

    def counted(src: str, pairs: list[tuple[Any, Any]], limits: Limits = FAST) -> list[Outcome]:
        starts.append(len(pairs))
        return real(src, pairs, limits)

    for grader, expected in ((single, [1.0, 0.0, 0.0, 1.0]), (multi, [1.0, 0.0, 0.0, 2.0])):
        one_by_one = [g.run_grader(grader, s, i, limits=FAST) for s, i in zip(samples, items, strict=True)]
        monkeypatch.setattr(sandbox, "run_python_batch", counted)
        batch = g.run_graders(grader, samples, items, limits=FAST)
        monkeypatch.setattr(sandbox, "run_python_batch", real)
        assert starts == [4]
        starts.clear()
        assert [r.reward for r in batch] == [r.reward for r in one_by_one] == expected
        assert [r.metadata.errors.python_grader_runtime_error for r in batch] == [False, False, True, False]
        assert "boom" in (batch[2].metadata.errors.python_grader_runtime_error_details or "")
        assert [r.sub_rewards for r in batch] == [r.sub_rewards for r in one_by_one]
