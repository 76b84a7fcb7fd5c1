"""TLS, and mutual TLS, on the trainers' reporting channel (docs/security.md) and on the public gRPC API
(docs/grpc.md): the one place gRPC credentials are built.

The scheduler's end (``ReportingServer``) serves TLS when it has a certificate (``TUNERY_GRPC_TLS_CERT`` and
``TUNERY_GRPC_TLS_KEY``, PEM files) and requires a client certificate signed by ``TUNERY_GRPC_TLS_CLIENT_CA`` when
that is set (mTLS). A trainer dials TLS when it has a CA to check the server with (``TUNERY_TRAINER_TLS_CA``) and
presents ``TUNERY_TRAINER_TLS_CERT``/``TUNERY_TRAINER_TLS_KEY`` when the server asks for them. The file layout is
cert-manager's (``tls.crt``, ``tls.key``, ``ca.crt`` in one Secret), so the chart mounts a Secret of each and points
these variables at it. A local backend passes the trainer's variables on from the server's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

    from tunery.settings import Settings

TRAINER_TLS_ENV = ("TUNERY_TRAINER_TLS_CA", "TUNERY_TRAINER_TLS_CERT", "TUNERY_TRAINER_TLS_KEY")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def tls_server_credentials(cert: str, key: str, client_ca: str, prefix: str) -> grpc.ServerCredentials | None:
    """A gRPC server's credentials from PEM files: None (plaintext) without a certificate; with ``client_ca``, a
    client certificate signed by it is required (mutual TLS). ``prefix`` names the settings in errors."""
    import grpc

    if not cert:
        return None
    if not key:
        raise ValueError(f"{prefix}_CERT is set without {prefix}_KEY")
    ca = _read(client_ca) if client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))], root_certificates=ca, require_client_auth=ca is not None
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The reporting server's credentials (TUNERY_GRPC_TLS_*): None (plaintext) without a certificate."""
    s = settings
    return tls_server_credentials(s.grpc_tls_cert, s.grpc_tls_key, s.grpc_tls_client_ca, "TUNERY_GRPC_TLS")


def api_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The public gRPC API's credentials (TUNERY_API_GRPC_TLS_*): None (plaintext) without a certificate."""
    s = settings
    return tls_server_credentials(
        s.api_grpc_tls_cert, s.api_grpc_tls_key, s.api_grpc_tls_client_ca, "TUNERY_API_GRPC_TLS"
    )


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials | None:
    """A trainer's credentials for the reporting channel: None (plaintext) without a CA to check the server with."""
    import grpc

    if not ca:
        return None
    if bool(cert) != bool(key):
        raise ValueError("a trainer's TLS certificate and key go together (TUNERY_TRAINER_TLS_CERT, _KEY)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )


def channel_credentials_from_env(env: dict[str, str]) -> grpc.ChannelCredentials | None:
    ca, cert, key = (env.get(name, "") for name in TRAINER_TLS_ENV)
    return channel_credentials(ca, cert, key)


def trainer_tls_environment(settings: Settings) -> dict[str, str]:
    """What a local trainer needs to dial the reporting channel as the settings say (empty: plaintext)."""
    values = (settings.trainer_tls_ca, settings.trainer_tls_cert, settings.trainer_tls_key)
    return {name: value for name, value in zip(TRAINER_TLS_ENV, values, strict=True) if value}
