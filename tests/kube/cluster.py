"""A real Kubernetes control plane on loopback for the tests: etcd + kube-apiserver + kube-controller-manager +
kube-scheduler (v1.20.2, built by ``tests/kube/build.sh``), with the project's test kubelet driving pods.

``Cluster.start()`` makes a CA, the apiserver's serving cert and the service-account key pair with openssl,
a static admin token, starts the four processes on free ports, waits until the apiserver is ready and writes
a kubeconfig. ``Cluster.stop()`` stops them all (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "v1.20.2"
CACHE = Path(os.environ.get("TUNERY_KUBE_CACHE", Path.home() / ".cache" / "tunery" / "kube"))
BIN = CACHE / VERSION / "bin"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BUILD_SCRIPT = Path(__file__).with_name("build.sh")

CONTROLLERS = ",".join(
    ["*"]
    + [f"-{c}" for c in ("nodelifecycle", "nodeipam", "cloud-node-lifecycle", "service", "route", "attachdetach")]
    + ["-persistentvolume-binder", "-csrsigning"]
)


def missing_binaries() -> list[str]:
    missing = [b for b in BINARIES if not os.access(BIN / b, os.X_OK)]
    if shutil.which("etcd") is None:
        missing.append("etcd")
    return missing


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """CA, apiserver serving cert (SAN 127.0.0.1, localhost) and the service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
    _openssl("req", "-x509", "-new", "-nodes", "-key", "ca.key", "-subj", "/CN=tunery-test-ca", "-days", "7",
             "-out", "ca.crt", cwd=d)  # fmt: skip
    _openssl("genrsa", "-out", "apiserver.key", "2048", cwd=d)
    _openssl("req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver", "-out", "apiserver.csr", cwd=d)
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "7", "-extfile", "san.ext", "-out", "apiserver.crt", cwd=d)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


@dataclass
class Cluster:
    workdir: Path
    token: str = "tunery-test-admin-token"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server: str = ""
    kubeconfig: Path = Path()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def log_tail(self, name: str, n: int = 30) -> str:
        try:
            lines = (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def start(self, timeout: float = 90) -> Cluster:
        d = self.workdir
        pki = d / "pki"
        make_certs(pki)
        (d / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        etcd_port, peer_port, api_port = free_ports(3)
        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "etcd",
            [
                shutil.which("etcd") or "etcd",
                "--data-dir", str(d / "etcd"),
                "--name", "default",
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )  # fmt: skip
        self._spawn(
            "kube-apiserver",
            [
                str(BIN / "kube-apiserver"),
                "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--secure-port", str(api_port),
                "--insecure-port", "0",
                "--cert-dir", str(d / "apiserver-certs"),
                "--tls-cert-file", str(pki / "apiserver.crt"),
                "--tls-private-key-file", str(pki / "apiserver.key"),
                "--client-ca-file", str(pki / "ca.crt"),
                "--token-auth-file", str(d / "tokens.csv"),
                "--authorization-mode", "RBAC",
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                "--service-cluster-ip-range", "10.0.0.0/24",
                "--endpoint-reconciler-type", "none",
                "--allow-privileged",
            ],
        )  # fmt: skip
        self.kubeconfig = d / "kubeconfig"
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {self.server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
"""
        )
        try:
            self._wait_ready(timeout)
            self._spawn(
                "kube-controller-manager",
                [
                    str(BIN / "kube-controller-manager"),
                    "--kubeconfig", str(self.kubeconfig),
                    "--leader-elect=false",
                    "--controllers", CONTROLLERS,
                    "--service-account-private-key-file", str(pki / "sa.key"),
                    "--root-ca-file", str(pki / "ca.crt"),
                    "--bind-address", "127.0.0.1",
                    "--port", "0",
                    "--secure-port", "0",
                ],
            )  # fmt: skip
            self._spawn(
                "kube-scheduler",
                [
                    str(BIN / "kube-scheduler"),
                    "--kubeconfig", str(self.kubeconfig),
                    "--authentication-kubeconfig", str(self.kubeconfig),
                    "--authorization-kubeconfig", str(self.kubeconfig),
                    "--leader-elect=false",
                    "--bind-address", "127.0.0.1",
                    "--port", "0",
                    "--secure-port", str(free_ports(1)[0]),
                ],
            )  # fmt: skip
            time.sleep(1)
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{self.log_tail(name)}")
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{self.log_tail(name)}")
            try:
                code, body = self._get("/readyz")
                if code == 200:
                    return
                last = body[-500:]
            except OSError as e:
                last = str(e)
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready after {timeout} s: {last}\n{self.log_tail('kube-apiserver')}")

    def stop(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
