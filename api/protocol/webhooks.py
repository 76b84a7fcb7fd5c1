"""Webhook endpoints (``/v1/webhook_endpoints``, OpenAI's, as the official SDK's ``client.webhooks`` calls them) and
their delivery log (``/v1/webhook_endpoints/{id}/deliveries``, Tunery's extension: OpenAI's shapes and conventions,
``tunery.`` object types). docs/webhooks.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from api.protocol.base import CursorPage, OpenAIRequest, OpenAIResponse, TuneryExtension

MAX_URL_LENGTH = 2048
MAX_ENDPOINT_NAME_LENGTH = 256

EndpointName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ENDPOINT_NAME_LENGTH)]
EndpointURL = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_LENGTH)]


class CreateWebhookEndpointRequest(OpenAIRequest):
    name: EndpointName = Field(description="A human-readable name for the endpoint.")
    url: EndpointURL = Field(description="The http(s) URL that receives the deliveries.")
    event_types: list[str] | None = Field(
        None,
        min_length=1,
        description="The event types sent to it (default: fine_tuning.job.succeeded, .failed and .cancelled).",
    )


class UpdateWebhookEndpointRequest(OpenAIRequest):
    name: EndpointName | None = None
    url: EndpointURL | None = None
    event_types: list[str] | None = Field(None, min_length=1)


class ListWebhookEndpointsRequest(TuneryExtension):
    after: str | None = None
    limit: int = Field(20, ge=1)


class ListWebhookDeliveriesRequest(TuneryExtension):
    after: str | None = None
    limit: int = Field(20, ge=1)


class WebhookEndpoint(OpenAIResponse):
    """An endpoint as every read shows it: its secret only as a hint."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str
    created_at: int
    updated_at: int


class WebhookEndpointWithSecret(WebhookEndpoint):
    """The answer to a creation, the one time the secret (``whsec_…``) is shown: keep it to verify deliveries."""

    signing_secret: str


class WebhookEndpointList(CursorPage[WebhookEndpoint]):
    """The project's endpoints, newest first."""


class WebhookEndpointDeleted(OpenAIResponse):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookDelivery(OpenAIResponse):
    """One event sent (or to be sent) to one endpoint: how it went so far. ``status``: ``pending`` (next attempt at
    ``next_attempt_at``), ``delivered`` (a 2xx at ``delivered_at``) or ``failed`` (no 2xx within the retry window)."""

    id: str
    object: Literal["tunery.webhook_delivery"] = "tunery.webhook_delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: int | None
    next_attempt_at: int | None
    created_at: int
    delivered_at: int | None


class WebhookDeliveryList(CursorPage[WebhookDelivery]):
    """An endpoint's deliveries, newest first."""
