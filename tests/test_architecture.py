"""The rules of the house that code can check: dependency directions, torch-free control plane, fresh protos."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _names(nodes: Iterable[ast.AST]) -> set[str]:
    """The top-level packages the import statements among ``nodes`` import (absolute imports only)."""
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _file_imports(path: Path) -> set[str]:
    """Every import of a file, inside functions too."""
    return _names(ast.walk(ast.parse(path.read_text())))


def _imports(folder: str) -> set[str]:
    return set().union(*(_file_imports(path) for path in (ROOT / folder).rglob("*.py")))


def test_trainer_imports_nothing_from_the_control_plane_or_serving():
    assert not _imports("trainer") & {"api", "scheduler", "serving"}


def test_the_shared_package_imports_none_of_the_parts_it_is_shared_by():
    """``tunery/`` is the ground api/, scheduler/, serving/ and trainer/ stand on; the composition root that wires
    them (``api/server.py``) and the CLI (``api/cli/``) live in the outermost layer."""
    assert not _imports("tunery") & {"api", "scheduler", "serving", "trainer"}


def test_scheduler_and_serving_import_nothing_from_the_api():
    assert not _imports("scheduler") & {"api", "trainer"}
    assert not _imports("serving") & {"api", "scheduler", "trainer"}


TORCH = {"torch", "transformers", "peft", "trl"}
# The shared package's modules whose functions the trainer and the serving engine call with a model in hand, and
# that import torch inside those functions only: the one home of a computation both must do alike (the embeddings of
# the graders' cosine metric). The control plane imports them (for their types) without ever calling them.
TORCH_AT_CALL_TIME = {"embeddings.py"}


def _top_level_imports(path: Path) -> set[str]:
    return _names(ast.parse(path.read_text()).body)


@pytest.mark.parametrize("folder", ["api", "scheduler"])
def test_control_plane_never_imports_torch(folder):
    assert not _imports(folder) & TORCH


def test_the_shared_package_imports_torch_only_at_call_time_in_its_model_modules():
    for path in (ROOT / "tunery").rglob("*.py"):
        assert not _top_level_imports(path) & TORCH, path
        if path.name not in TORCH_AT_CALL_TIME or path.parent != ROOT / "tunery":
            assert not _file_imports(path) & TORCH, path


def test_embedded_server_starts_and_serves_without_torch(tmp_path):
    """Build the whole embedded server and answer requests: torch stays unloaded until a model runs."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from api.server import build
from tunery.settings import Settings
app, shutdown = build(Settings(data_dir={str(tmp_path)!r}, demo_model=False, base_models={{"m": "/nonexistent"}}))
c = TestClient(app)
assert c.get("/v1/models").status_code == 200
assert c.get("/v1/files").status_code == 200
shutdown()
heavy = sorted(m for m in ("torch", "transformers", "peft", "trl", "datasets") if m in sys.modules)
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_generated_grpc_code_is_current(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos/tunery/v1/reporting.proto"),
        ],
        check=True,
    )
    for name in ("reporting_pb2.py", "reporting_pb2_grpc.py", "reporting_pb2.pyi"):
        assert (tmp_path / "tunery/v1" / name).read_text() == (ROOT / "tunery/v1" / name).read_text(), (
            f"tunery/v1/{name} is stale: run `make proto`"
        )


# ---- one writer of a job's state ----------------------------------------------------------------------------------

JOB_STATE_FIELDS = {"status", "error", "finished_at", "pause_requested", "cancel_requested"}
# Writes of those attribute names that are not on a Job, by (file, receiver, attribute): what the object is.
NOT_JOBS = {
    ("api/errors.py", "self", "status"): "APIError's HTTP status",
    ("serving/errors.py", "self", "status"): "the serving error's HTTP status",
    ("api/services/uploads.py", "upload", "status"): "an Upload",
    ("scheduler/preprocess.py", "f", "status"): "a File",
    ("tunery/webhooks.py", "d", "status"): "a WebhookDelivery",
}
STATE_FOLDERS = ("api", "scheduler", "serving", "tunery")


def _assigned(target: ast.expr) -> list[ast.expr]:
    """The single targets of an assignment target (``a, b.c = ...`` has two)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [t for elt in target.elts for t in _assigned(elt)]
    if isinstance(target, ast.Starred):
        return _assigned(target.value)
    return [target]


def _builds_on_job_table(expr: ast.expr) -> bool:
    """Whether a chained statement (``update(Job).where(...)``) starts with ``update(Job)`` or ``insert(Job)``."""
    while isinstance(expr, ast.Call):
        head = ast.unparse(expr.func).split(".")[-1]
        if head in ("update", "insert") and expr.args and ast.unparse(expr.args[0]) in ("Job", "models.Job"):
            return True
        if not isinstance(expr.func, ast.Attribute):
            return False
        expr = expr.func.value
    return False


def job_state_writes(rel: str, source: str) -> list[str]:
    """Where a module writes a job's status, error, finished_at or pause/cancel flags itself (see the test)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in _assigned(target)]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = _assigned(node.target)
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr in JOB_STATE_FIELDS:
                receiver = ast.unparse(t.value)
                if (rel, receiver, t.attr) not in NOT_JOBS:
                    found.append(f"{rel}:{t.lineno}: {receiver}.{t.attr} = ...")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        keywords = sorted({k.arg for k in node.keywords if k.arg} & JOB_STATE_FIELDS)
        if func == "setattr" and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in JOB_STATE_FIELDS:
                found.append(f"{rel}:{node.lineno}: setattr(..., {name.value!r}, ...)")
        elif keywords and func in ("Job", "models.Job"):
            found.append(f"{rel}:{node.lineno}: Job({', '.join(keywords)}=...)")
        elif (
            keywords
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "values"
            and _builds_on_job_table(node.func.value)
        ):
            found.append(f"{rel}:{node.lineno}: update(Job).values({', '.join(keywords)}=...)")
    return found


def test_only_the_job_state_machine_writes_a_job_s_state():
    """A job's ``status``, ``error``, ``finished_at``, ``pause_requested`` and ``cancel_requested`` are written by
    tunery/jobstate.py alone, through transitions checked against its table.

    The rule, checked on the syntax of api/, scheduler/, serving/ and tunery/: outside tunery/jobstate.py, no
    assignment (``=``, ``+=``, annotated, tuple targets) to an attribute of one of those names, no ``setattr`` of
    one, no ``Job(...)`` with one as a keyword, and no ``update(Job)``/``insert(Job)`` statement whose ``.values``
    has one. Files and uploads have a ``status`` too, and errors an HTTP status: those writes are listed in
    NOT_JOBS by file and variable name. The list fails closed: a new write of such an attribute, whatever its
    variable is called, fails here until it goes through tunery/jobstate.py or is listed as not a Job.
    """
    found = []
    for folder in STATE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != "tunery/jobstate.py":
                found += job_state_writes(rel, path.read_text())
    assert found == [], "write these through tunery/jobstate.py:\n" + "\n".join(found)
    for rel, receiver, attr in NOT_JOBS:  # each listed write still exists (the list does not rot)
        source = (ROOT / rel).read_text()
        assert f"{receiver}.{attr} = " in source, f"{rel} no longer writes {receiver}.{attr}: drop it from NOT_JOBS"


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("job.status = 'queued'", True),
        ("j.finished_at = 1", True),
        ("row.cancel_requested: bool = True", True),
        ("a, job.error = 1, {}", True),
        ("setattr(job, 'pause_requested', True)", True),
        ("Job(id='x', status='queued')", True),
        ("s.execute(update(Job).where(Job.id == 'x').values(status='failed'))", True),
        ("f.status = 'processed'", False),  # listed for this file as a File
        ("upload.status = 'completed'", True),  # listed for api/services/uploads.py only
        ("update(File).values(status='processed')", False),
        ("File(id='x', status='processed')", False),
        ("job.status == 'queued'", False),
        ("job.error.message", False),
    ],
)
def test_the_job_state_rule_sees_each_kind_of_write(source, flagged):
    assert bool(job_state_writes("scheduler/preprocess.py", source)) is flagged


# ---- no import circles -----------------------------------------------------------------------------------------
PACKAGES = ("api", "scheduler", "serving", "trainer", "tunery")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports when it is imported: its top-level imports (and those in top-level
    ``try``/``if`` blocks), not those inside functions (lazy, on purpose) or under ``if TYPE_CHECKING``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.If | ast.Try):
                for block in (node.body, node.orelse, getattr(node, "finalbody", [])):
                    visit(block)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.split(".") if is_package else name.split(".")[:-1]
                    parent = parent[: len(parent) - (node.level - 1)]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                found.update([base, *(f"{base}.{a.name}" for a in node.names)])

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules and m != name}


def test_no_module_imports_itself_back() -> None:
    """No circle of module-level imports (trainer/run.py <-> preference.py <-> resume.py was one): each layer can be
    read, and imported, from its leaves up."""
    paths = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {name: _module_level_imports(path, name, set(paths)) for name, path in paths.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not circles, circles


def test_tests_mirror_the_modules_they_test() -> None:
    """Tests of ``api/``, ``scheduler/``, ``serving/``, ``trainer/`` and ``tunery/`` live in the folder of the same
    name under ``tests/``; whole-system tests in ``e2e/``, the chart's in ``helm/``, the images' in ``deploy/``."""
    allowed = {*PACKAGES, "e2e", "helm", "deploy"}
    tests = ROOT / "tests"
    stray = sorted(p.name for p in tests.glob("test_*.py") if p.name != "test_architecture.py")
    folders = {p.parent.relative_to(tests).parts[0] for p in tests.glob("*/test_*.py")}
    assert not stray, stray
    assert folders <= allowed, folders - allowed
    assert all((tests / f / "__init__.py").is_file() for f in folders)


# What a plain UPDATE of jobs may set without bumping the job's ``version``: nothing a job's object shows.
UNVERSIONED_JOB_FIELDS = {"claimed_by", "lease_expires_at"}


def unversioned_job_updates(rel: str, source: str) -> list[str]:
    """``update(Job).values(...)`` statements that set a field outside UNVERSIONED_JOB_FIELDS without ``version``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "values"
            and _builds_on_job_table(node.func.value)
        ):
            fields = {k.arg for k in node.keywords if k.arg}
            if "version" not in fields and not fields <= UNVERSIONED_JOB_FIELDS:
                found.append(f"{rel}:{node.lineno}: update(Job).values({', '.join(sorted(fields))}=...)")
    return found


def test_every_write_of_what_a_job_shows_moves_its_version() -> None:
    """The read routes keep a job's JSON for one ``version`` of its row (api/jsoncache.py). ORM writes bump it (the
    optimistic lock); a plain UPDATE does not, so one may set only what the object does not show (a claim's lease),
    or set ``version`` itself."""
    found = []
    for folder in STATE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += unversioned_job_updates(path.relative_to(ROOT).as_posix(), path.read_text())
    assert found == [], found
    assert unversioned_job_updates("x.py", "s.execute(update(Job).where(Job.id == 'x').values(trained_tokens=3))")
    assert not unversioned_job_updates("x.py", "s.execute(update(Job).values(lease_expires_at=3))")
    assert not unversioned_job_updates(
        "x.py", "s.execute(update(Job).values(trained_tokens=3, version=Job.version + 1))"
    )
