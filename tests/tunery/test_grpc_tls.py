"""TLS and mutual TLS on the trainers' reporting channel (tunery/grpc_tls.py), with certificates made by openssl."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from scheduler.reporting import ReportingServer, ReportingService
from tests.scheduler.test_reporting import TOKEN, a_job
from trainer.reporter import Reporter
from tunery.db import Database, JobEvent
from tunery.grpc_tls import channel_credentials, channel_credentials_from_env, server_credentials
from tunery.settings import Settings
from tunery.storage import LocalObjectStore
from tunery.v1 import reporting_pb2 as pb
from tunery.v1 import reporting_pb2_grpc as pb_grpc


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder: Path, ca: str, name: str, san: str, usage: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA for the server, one for the trainers, a server certificate for 127.0.0.1, a trainer certificate, and a
    stranger's certificate from a CA nobody trusts."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("server-ca", "client-ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "1", "-subj", f"/CN={ca}", cwd=d)  # fmt: skip
    _issue(d, "server-ca", "server", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    _issue(d, "client-ca", "trainer", "DNS:trainer", "clientAuth")
    _issue(d, "other-ca", "stranger", "DNS:trainer", "clientAuth")
    return d


def _serve(tmp_path: Path, pki: Path, mutual: bool) -> tuple[Database, ReportingServer]:
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.upgrade()
    with db.session() as s:
        s.add(a_job("ftjob-victim"))
    settings = Settings(
        grpc_tls_cert=str(pki / "server.crt"),
        grpc_tls_key=str(pki / "server.key"),
        grpc_tls_client_ca=str(pki / "client-ca.crt") if mutual else "",
    )
    server = ReportingServer(
        ReportingService(db, LocalObjectStore(tmp_path / "objects")), credentials=server_credentials(settings)
    )
    server.start()
    return db, server


@pytest.fixture
def tls_server(tmp_path: Path, pki: Path) -> Iterator[tuple[Database, ReportingServer]]:
    db, server = _serve(tmp_path, pki, mutual=False)
    yield db, server
    server.stop(grace=0)
    db.engine.dispose()


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Path) -> Iterator[tuple[Database, ReportingServer]]:
    db, server = _serve(tmp_path, pki, mutual=True)
    yield db, server
    server.stop(grace=0)
    db.engine.dispose()


def _event(address: str, credentials: Any, message: str) -> grpc.StatusCode:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    try:
        pb_grpc.TrainerReportingStub(channel).Event(
            pb.EventRequest(run=pb.RunRef(job_id="ftjob-victim", run_token=TOKEN), message=message), timeout=5
        )
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
    finally:
        channel.close()


def _messages(db: Database) -> set[str]:
    with db.session() as s:
        return set(s.scalars(select(JobEvent.message).where(JobEvent.job_id == "ftjob-victim")))


def test_tls_reports_get_through_and_plaintext_does_not(tls_server: Any, pki: Path) -> None:
    db, server = tls_server
    assert server.tls
    trusted = channel_credentials(str(pki / "server-ca.crt"))
    assert _event(server.address, trusted, "over TLS") == grpc.StatusCode.OK
    assert _event(server.address, None, "plaintext") == grpc.StatusCode.UNAVAILABLE
    # A server certificate from a CA the trainer was not given is refused by the trainer.
    assert _event(server.address, channel_credentials(str(pki / "other-ca.crt")), "wrong CA") != grpc.StatusCode.OK
    assert _messages(db) == {"over TLS"}


def test_mutual_tls_refuses_a_trainer_without_a_trusted_certificate(mtls_server: Any, pki: Path) -> None:
    db, server = mtls_server
    ca = str(pki / "server-ca.crt")
    trainer = channel_credentials(ca, str(pki / "trainer.crt"), str(pki / "trainer.key"))
    assert _event(server.address, trainer, "with a trainer certificate") == grpc.StatusCode.OK
    assert _event(server.address, channel_credentials(ca), "without one") == grpc.StatusCode.UNAVAILABLE
    stranger = channel_credentials(ca, str(pki / "stranger.crt"), str(pki / "stranger.key"))
    assert _event(server.address, stranger, "with an untrusted one") == grpc.StatusCode.UNAVAILABLE
    assert _messages(db) == {"with a trainer certificate"}


def test_the_trainer_s_reporter_dials_tls_from_its_environment(mtls_server: Any, pki: Path) -> None:
    db, server = mtls_server
    env = {
        "TUNERY_TRAINER_TLS_CA": str(pki / "server-ca.crt"),
        "TUNERY_TRAINER_TLS_CERT": str(pki / "trainer.crt"),
        "TUNERY_TRAINER_TLS_KEY": str(pki / "trainer.key"),
    }
    reporter = Reporter(server.address, "ftjob-victim", TOKEN, credentials=channel_credentials_from_env(env))
    reporter.event("info", "from the trainer's reporter")
    reporter.close(timeout=10)
    assert _messages(db) == {"from the trainer's reporter"}
    assert channel_credentials_from_env({}) is None  # no CA: plaintext, as before


def test_half_configured_tls_is_refused_at_start(pki: Path) -> None:
    with pytest.raises(ValueError, match="TUNERY_GRPC_TLS_KEY"):
        server_credentials(Settings(grpc_tls_cert=str(pki / "server.crt")))
    with pytest.raises(ValueError, match="certificate and key go together"):
        channel_credentials(str(pki / "server-ca.crt"), cert=str(pki / "trainer.crt"))
    assert server_credentials(Settings()) is None
