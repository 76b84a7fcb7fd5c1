"""``/v1/webhook_endpoints`` over HTTP (OpenAI's, as the SDK's ``client.webhooks.create/retrieve/update/list/delete``
call it), and its delivery log and redelivery (Tunery's extension). Only the project's owner and the organization's
admin may call them (api/auth.py); api/services/webhooks.py does the rest. docs/webhooks.md."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.auth import request_principal
from api.context import get_ctx
from api.errors import ERROR_RESPONSES
from api.pagination import limit_param
from api.protocol.base import Name
from api.protocol.webhooks import (
    CreateWebhookEndpointRequest,
    ListWebhookDeliveriesRequest,
    ListWebhookEndpointsRequest,
    UpdateWebhookEndpointRequest,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointWithSecret,
)
from api.routing import API_PREFIX
from api.services.webhooks import WebhookService

router = APIRouter(prefix=f"{API_PREFIX}/webhook_endpoints", responses=ERROR_RESPONSES)


async def webhook_service(request: Request) -> WebhookService:
    """The caller's project's endpoints (on the event loop: the request guard admitted the caller already)."""
    ctx = get_ctx(request)
    return WebhookService(ctx, request_principal(request, ctx).tenant(ctx.settings))


Svc = Depends(webhook_service)


@router.post("")
def create_webhook_endpoint(body: CreateWebhookEndpointRequest, svc: WebhookService = Svc) -> WebhookEndpointWithSecret:
    """Create an endpoint; the answer holds its signing secret, the only time it is shown."""
    return svc.create(body)


@router.get("")
def list_webhook_endpoints(
    after: str | None = None, limit: int = limit_param(20), svc: WebhookService = Svc
) -> WebhookEndpointList:
    return svc.list(ListWebhookEndpointsRequest(after=after, limit=limit))


@router.get("/{webhook_endpoint_id}")
def retrieve_webhook_endpoint(webhook_endpoint_id: Name, svc: WebhookService = Svc) -> WebhookEndpoint:
    return svc.retrieve(webhook_endpoint_id)


@router.post("/{webhook_endpoint_id}")
def update_webhook_endpoint(
    webhook_endpoint_id: Name, body: UpdateWebhookEndpointRequest, svc: WebhookService = Svc
) -> WebhookEndpoint:
    return svc.update(webhook_endpoint_id, body)


@router.delete("/{webhook_endpoint_id}")
def delete_webhook_endpoint(webhook_endpoint_id: Name, svc: WebhookService = Svc) -> WebhookEndpointDeleted:
    return svc.delete(webhook_endpoint_id)


@router.get("/{webhook_endpoint_id}/deliveries")
def list_webhook_deliveries(
    webhook_endpoint_id: Name, after: str | None = None, limit: int = limit_param(20), svc: WebhookService = Svc
) -> WebhookDeliveryList:
    """The endpoint's delivery log, newest first (Tunery's extension)."""
    return svc.deliveries(webhook_endpoint_id, ListWebhookDeliveriesRequest(after=after, limit=limit))


@router.post("/{webhook_endpoint_id}/deliveries/{delivery_id}/redeliver")
def redeliver_webhook_delivery(
    webhook_endpoint_id: Name, delivery_id: Name, svc: WebhookService = Svc
) -> WebhookDelivery:
    """Send a delivery again now (Tunery's extension)."""
    return svc.redeliver(webhook_endpoint_id, delivery_id)
