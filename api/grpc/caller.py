"""Who the key of a call is over gRPC (``CallerService``, protos/tunery/v1/caller.proto): the twin of
``GET /v1/tunery/me`` (api/services/caller.py), for a client that offers only what its key may do."""

from __future__ import annotations

from typing import Any

from api.auth import Principal
from api.grpc.convert import to_message
from api.grpc.services import Context, Servicer
from api.services.caller import describe
from tunery.v1 import caller_pb2 as pb
from tunery.v1 import caller_pb2_grpc as pb_grpc


class CallerServicer(Servicer, pb_grpc.CallerServiceServicer):
    async def GetCaller(self, request: pb.GetCallerRequest, context: Context) -> Any:
        async def run(p: Principal) -> pb.Caller:
            return to_message(describe(p, self.ctx.settings), pb.Caller)

        return await self.calls.unary("CallerService/GetCaller", context, run)
