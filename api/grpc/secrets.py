"""A project's secrets over gRPC (``SecretService``, protos/tunery/v1/secrets.proto): REST's service
(api/services/secrets.py), each RPC the twin of its ``/v1/tunery/secrets`` route, so the owner-only rule, the closed
set of names and the value never answered are REST's."""

from __future__ import annotations

from typing import Any

from api.auth import Principal
from api.grpc.convert import to_message
from api.grpc.handlers import path_value
from api.grpc.services import Context, Servicer
from api.protocol.secrets import SetSecretRequest
from api.services.secrets import SecretService
from tunery.integrations import SecretName
from tunery.v1 import secrets_pb2 as pb
from tunery.v1 import secrets_pb2_grpc as pb_grpc


class SecretServicer(Servicer, pb_grpc.SecretServiceServicer):
    def _svc(self, p: Principal) -> SecretService:
        return SecretService(self.ctx, *self._who(p))

    async def ListSecrets(self, request: pb.ListSecretsRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.ListSecretsResponse:
            return to_message(self._svc(p).list(), pb.ListSecretsResponse)

        return await self.calls.blocking("SecretService/ListSecrets", context, run)

    async def SetSecret(self, request: pb.SetSecretRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.Secret:
            name = path_value(SecretName, "name", request.name)
            body = SetSecretRequest.model_validate({"value": request.value} if request.value else {})
            return to_message(self._svc(p).set(name, body.value), pb.Secret)

        return await self.calls.blocking("SecretService/SetSecret", context, run, read=False)

    async def DeleteSecret(self, request: pb.DeleteSecretRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.SecretDeleted:
            return to_message(self._svc(p).delete(path_value(SecretName, "name", request.name)), pb.SecretDeleted)

        return await self.calls.blocking("SecretService/DeleteSecret", context, run, read=False)
