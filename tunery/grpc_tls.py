"""TLS, and mutual TLS, on the trainers' reporting channel (docs/security.md): the one place both ends build their
gRPC credentials.

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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The reporting server's credentials: None (plaintext) without a certificate."""
    import grpc

    if not settings.grpc_tls_cert:
        return None
    if not settings.grpc_tls_key:
        raise ValueError("TUNERY_GRPC_TLS_CERT is set without TUNERY_GRPC_TLS_KEY")
    client_ca = _read(settings.grpc_tls_client_ca) if settings.grpc_tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(settings.grpc_tls_key), _read(settings.grpc_tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
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
