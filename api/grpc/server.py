"""The public gRPC server: the services of api/grpc/services.py, the standard health service and server reflection,
on ``TUNERY_API_GRPC_PORT`` of the API process, on the API's own event loop (started and stopped with the app)."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from api.context import AppContext
from api.grpc.caller import CallerServicer
from api.grpc.calls import Calls
from api.grpc.embeddings import EmbeddingServicer
from api.grpc.handlers import service_handler
from api.grpc.secrets import SecretServicer
from api.grpc.services import (
    AliasServicer,
    ChatServicer,
    FileServicer,
    FineTuningServicer,
    GraderServicer,
    ModelServicer,
)
from api.grpc.short_jobs import EvaluationServicer, ExportServicer
from api.grpc.webhooks import WebhookServicer
from tunery.grpc_tls import api_server_credentials
from tunery.v1 import (
    aliases_pb2,
    caller_pb2,
    chat_pb2,
    embeddings_pb2,
    evaluations_pb2,
    exports_pb2,
    files_pb2,
    fine_tuning_pb2,
    graders_pb2,
    models_pb2,
    secrets_pb2,
    webhooks_pb2,
)

log = logging.getLogger("tunery.api.grpc")

# The modules of the public API's services (every .proto of protos/tunery/v1 but the trainer's reporting.proto).
MODULES = (
    chat_pb2,
    files_pb2,
    fine_tuning_pb2,
    models_pb2,
    aliases_pb2,
    graders_pb2,
    evaluations_pb2,
    exports_pb2,
    webhooks_pb2,
    secrets_pb2,
    embeddings_pb2,
    caller_pb2,
)
SERVICES = tuple(service.full_name for module in MODULES for service in module.DESCRIPTOR.services_by_name.values())
# A message's most bytes, each way: a page of 10,000 file objects fits; a file's content goes in 1 MiB chunks.
MAX_MESSAGE_BYTES = 16 << 20


class PublicGrpcServer:
    """The server of one API process; ``port`` is the bound one (TUNERY_API_GRPC_PORT 0 picks a free one)."""

    def __init__(self, ctx: AppContext, host: str, port: int):
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        calls = Calls(ctx)
        servicers = {
            "FileService": FileServicer(ctx, calls),
            "FineTuningService": FineTuningServicer(ctx, calls),
            "ModelService": ModelServicer(ctx, calls),
            "ChatService": ChatServicer(ctx, calls),
            "AliasService": AliasServicer(ctx, calls),
            "GraderService": GraderServicer(ctx, calls),
            "EvaluationService": EvaluationServicer(ctx, calls),
            "ExportService": ExportServicer(ctx, calls),
            "WebhookService": WebhookServicer(ctx, calls),
            "SecretService": SecretServicer(ctx, calls),
            "EmbeddingService": EmbeddingServicer(ctx, calls),
            "CallerService": CallerServicer(ctx, calls),
        }
        for module in MODULES:
            for service in module.DESCRIPTOR.services_by_name.values():
                self.server.add_generic_rpc_handlers((service_handler(servicers[service.name], service),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        credentials = api_server_credentials(ctx.settings)
        address = f"{host}:{port}"
        self.tls = credentials is not None
        self.port = (
            self.server.add_secure_port(address, credentials) if credentials else self.server.add_insecure_port(address)
        )
        if self.port == 0:
            raise RuntimeError(f"could not bind the gRPC API to {host}:{port}")
        self.address = f"{host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC API on %s (%s)", self.address, "TLS" if self.tls else "plaintext")

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
