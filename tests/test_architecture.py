"""The rules of the house that code can check: dependency directions, torch-free control plane, fresh protos."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_trainer_imports_nothing_from_the_control_plane_or_serving():
    assert not _imports("trainer") & {"api", "scheduler", "serving"}


@pytest.mark.parametrize("folder", ["api", "scheduler", "tunery"])
def test_control_plane_never_imports_torch_statically(folder):
    assert not _imports(folder) & {"torch", "transformers", "peft", "trl"}


def test_embedded_server_starts_and_serves_without_torch(tmp_path):
    """Build the whole embedded server and answer requests: torch stays unloaded until a model runs."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from tunery.server import build
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
