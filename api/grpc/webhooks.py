"""Webhook endpoints over gRPC (``WebhookService``, protos/tunery/v1/webhooks.proto): REST's service
(api/services/webhooks.py), each RPC the twin of its ``/v1/webhook_endpoints`` route, so the owner-only rule, the
URL checks and the secret shown once are REST's."""

from __future__ import annotations

from typing import Any

from api.auth import Principal
from api.grpc.convert import message_dict, to_message
from api.grpc.services import Context, Servicer, query_of
from api.protocol.webhooks import (
    CreateWebhookEndpointRequest,
    ListWebhookDeliveriesRequest,
    ListWebhookEndpointsRequest,
    UpdateWebhookEndpointRequest,
)
from api.services.webhooks import WebhookService
from tunery.v1 import webhooks_pb2 as pb
from tunery.v1 import webhooks_pb2_grpc as pb_grpc

ID = "webhook_endpoint_id"


class WebhookServicer(Servicer, pb_grpc.WebhookServiceServicer):
    def _svc(self, p: Principal) -> WebhookService:
        return WebhookService(self.ctx, p.tenant(self.ctx.settings))

    async def CreateWebhookEndpoint(self, request: pb.CreateWebhookEndpointRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.WebhookEndpoint:
            req = CreateWebhookEndpointRequest.model_validate(message_dict(request))
            return to_message(self._svc(p).create(req), pb.WebhookEndpoint)

        return await self.calls.blocking("WebhookService/CreateWebhookEndpoint", context, run, read=False)

    async def ListWebhookEndpoints(self, request: pb.ListWebhookEndpointsRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.ListWebhookEndpointsResponse:
            req = ListWebhookEndpointsRequest.model_validate(query_of(request))
            return to_message(self._svc(p).list(req), pb.ListWebhookEndpointsResponse)

        return await self.calls.blocking("WebhookService/ListWebhookEndpoints", context, run)

    async def GetWebhookEndpoint(self, request: pb.GetWebhookEndpointRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.WebhookEndpoint:
            return to_message(self._svc(p).retrieve(request.webhook_endpoint_id), pb.WebhookEndpoint)

        return await self.calls.blocking("WebhookService/GetWebhookEndpoint", context, run)

    async def UpdateWebhookEndpoint(self, request: pb.UpdateWebhookEndpointRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.WebhookEndpoint:
            req = UpdateWebhookEndpointRequest.model_validate(query_of(request, ID))
            return to_message(self._svc(p).update(request.webhook_endpoint_id, req), pb.WebhookEndpoint)

        return await self.calls.blocking("WebhookService/UpdateWebhookEndpoint", context, run, read=False)

    async def DeleteWebhookEndpoint(self, request: pb.GetWebhookEndpointRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.WebhookEndpointDeleted:
            return to_message(self._svc(p).delete(request.webhook_endpoint_id), pb.WebhookEndpointDeleted)

        return await self.calls.blocking("WebhookService/DeleteWebhookEndpoint", context, run, read=False)

    async def ListWebhookDeliveries(self, request: pb.ListWebhookDeliveriesRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.ListWebhookDeliveriesResponse:
            req = ListWebhookDeliveriesRequest.model_validate(query_of(request, ID))
            page = self._svc(p).deliveries(request.webhook_endpoint_id, req)
            return to_message(page, pb.ListWebhookDeliveriesResponse)

        return await self.calls.blocking("WebhookService/ListWebhookDeliveries", context, run)

    async def RedeliverWebhookDelivery(self, request: pb.RedeliverWebhookDeliveryRequest, context: Context) -> Any:
        def run(p: Principal) -> pb.WebhookDelivery:
            delivery = self._svc(p).redeliver(request.webhook_endpoint_id, request.delivery_id)
            return to_message(delivery, pb.WebhookDelivery)

        return await self.calls.blocking("WebhookService/RedeliverWebhookDelivery", context, run, read=False)
