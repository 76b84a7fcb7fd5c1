"""Embeddings over gRPC (``EmbeddingService``, protos/tunery/v1/embeddings.proto): REST's service
(api/services/embeddings.py), the twin of ``POST /v1/embeddings``. The vectors are always packed floats: over gRPC
there is no JSON to shorten with base64, so ``encoding_format`` is accepted and the answer asked for as floats."""

from __future__ import annotations

from typing import Any

from api.auth import Principal
from api.grpc.convert import message_dict, to_message
from api.grpc.services import Context, Servicer
from api.protocol.embeddings import EmbeddingRequest
from api.services.embeddings import EmbeddingService
from tunery.v1 import embeddings_pb2 as pb
from tunery.v1 import embeddings_pb2_grpc as pb_grpc


class EmbeddingServicer(Servicer, pb_grpc.EmbeddingServiceServicer):
    async def CreateEmbedding(self, request: pb.CreateEmbeddingRequest, context: Context) -> Any:
        async def run(p: Principal) -> pb.CreateEmbeddingResponse:
            req = EmbeddingRequest.model_validate(message_dict(request))
            answer = await EmbeddingService(self.ctx, p.tenant(self.ctx.settings)).create(
                req.model_copy(update={"encoding_format": "float"})
            )
            return to_message(answer, pb.CreateEmbeddingResponse)

        return await self.calls.unary("EmbeddingService/CreateEmbedding", context, run)
