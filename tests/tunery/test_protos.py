"""The protos: `buf lint` clean, no breaking change against the previous commit's protos (`buf breaking`), and the
generated Python code in tunery/v1/ current (what `make proto` writes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.metadata_stores import unavailable

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
BUF = Path(sys.executable).parent / "buf"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        unavailable("buf is not installed (pip install buf-bin: make setup does)")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_buf_lint_is_clean() -> None:
    out = buf("lint", "protos")
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_breaking_change_against_the_previous_commit() -> None:
    has_parent = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD~1"], cwd=ROOT, capture_output=True)
    if has_parent.returncode != 0:
        unavailable("no previous commit to compare the protos with (a shallow clone?)")
    out = buf("breaking", "protos", "--against", ".git#ref=HEAD~1,subdir=protos")
    assert out.returncode == 0, out.stdout + out.stderr


def test_buf_breaking_finds_a_renumbered_field(tmp_path: Path) -> None:
    changed = tmp_path / "protos"
    shutil.copytree(PROTOS, changed)
    proto = changed / "tunery" / "v1" / "models.proto"
    proto.write_text(proto.read_text().replace("string owned_by = 4;", "string owned_by = 5;"))
    out = buf("breaking", str(changed), "--against", str(PROTOS))
    assert out.returncode != 0
    assert "owned_by" in out.stdout + out.stderr


def test_generated_code_is_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "tunery" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        check=True,
    )
    generated = sorted(p.name for p in (tmp_path / "tunery" / "v1").iterdir())
    shipped = sorted(p.name for p in (ROOT / "tunery" / "v1").iterdir() if "_pb2" in p.name)
    assert generated == shipped, "run `make proto`"
    for name in generated:
        assert (tmp_path / "tunery" / "v1" / name).read_bytes() == (ROOT / "tunery" / "v1" / name).read_bytes(), (
            f"tunery/v1/{name} is not what `make proto` generates: run it"
        )
