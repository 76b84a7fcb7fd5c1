"""A project's webhook endpoints and their delivery log (docs/webhooks.md). tunery/webhooks.py holds the rules (event
types, signing, which URLs are refused, the retry schedule); scheduler/webhooks.py sends.

Who may call: the project's owner and the organization's admin (api/auth.py). An endpoint of another project is the
404 of one that never existed. The signing secret is answered once, by the creation; every other answer has its hint
only. Blocking (the metadata store, and DNS when a URL is checked): run the calls off the event loop.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, NotFound
from api.pagination import page
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
from tunery import ids, webhooks
from tunery.db import WebhookDelivery as DeliveryRow
from tunery.db import WebhookEndpoint as EndpointRow


def endpoint_not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"No webhook endpoint found with id '{endpoint_id}'.",
        param="webhook_endpoint_id",
        code="webhook_endpoint_not_found",
    )


def endpoint_object(e: EndpointRow) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=e.id,
        name=e.name,
        url=e.url,
        event_types=list(e.event_types),
        signing_secret_hint=webhooks.secret_hint(e.secret),
        created_at=e.created_at,
        updated_at=e.updated_at,
    )


def delivery_object(d: DeliveryRow) -> WebhookDelivery:
    return WebhookDelivery(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=d.event_type,
        status=d.status,  # type: ignore[arg-type]  # a DeliveryStatus, as tunery/webhooks.py writes it
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        last_attempt_at=d.last_attempt_at,
        next_attempt_at=None if d.next_attempt_at is None else int(d.next_attempt_at),
        created_at=d.created_at,
        delivered_at=d.delivered_at,
    )


def event_types(requested: list[str] | None) -> list[str]:
    """The event types of a request (default: the three of a job's end), each known, in the order given, once."""
    if requested is None:
        return [t.value for t in webhooks.DEFAULT_EVENT_TYPES]
    known = {t.value for t in webhooks.EventType}
    for t in requested:
        if t not in known:
            raise InvalidRequest(
                f"Invalid event type '{t}': supported are {', '.join(sorted(known))}.",
                param="event_types",
                code="invalid_event_type",
            )
    return list(dict.fromkeys(requested))


class WebhookService:
    def __init__(self, ctx: AppContext, tenant: Tenant):
        self.ctx = ctx
        self.tenant = tenant

    def _check_url(self, url: str) -> None:
        try:
            webhooks.check_url(url, self.ctx.settings.webhooks_allow_private)
        except webhooks.RefusedURL as e:
            raise InvalidRequest(str(e), param="url", code="invalid_url") from None

    def _endpoint(self, s: Session, endpoint_id: str) -> EndpointRow:
        t = self.tenant
        e = s.scalar(
            select(EndpointRow).where(
                EndpointRow.id == endpoint_id,
                EndpointRow.organization_id == t.organization_id,
                EndpointRow.project_id == t.project_id,
            )
        )
        if e is None:
            raise endpoint_not_found(endpoint_id)
        return e

    # ---- endpoints ------------------------------------------------------------------------------------------------
    def create(self, req: CreateWebhookEndpointRequest) -> WebhookEndpointWithSecret:
        types = event_types(req.event_types)
        self._check_url(req.url)
        now = int(time.time())
        t = self.tenant
        row = EndpointRow(
            id=ids.webhook_endpoint_id(),
            organization_id=t.organization_id,
            project_id=t.project_id,
            name=req.name,
            url=req.url,
            event_types=types,
            secret=webhooks.new_secret(),
            created_at=now,
            updated_at=now,
        )
        with self.ctx.db.session() as s:
            s.add(row)
        return WebhookEndpointWithSecret(**endpoint_object(row).model_dump(), signing_secret=row.secret)

    def list(self, req: ListWebhookEndpointsRequest) -> WebhookEndpointList:
        t = self.tenant
        with self.ctx.db.session() as s:
            q = select(EndpointRow).where(
                EndpointRow.organization_id == t.organization_id, EndpointRow.project_id == t.project_id
            )
            rows, more = page(s, EndpointRow, q, after=req.after, limit=req.limit)
            return WebhookEndpointList.of([endpoint_object(e) for e in rows], more)

    def retrieve(self, endpoint_id: str) -> WebhookEndpoint:
        with self.ctx.db.session() as s:
            return endpoint_object(self._endpoint(s, endpoint_id))

    def update(self, endpoint_id: str, req: UpdateWebhookEndpointRequest) -> WebhookEndpoint:
        types = None if req.event_types is None else event_types(req.event_types)
        if req.url is not None:
            self._check_url(req.url)

        def work(s: Session) -> WebhookEndpoint:
            e = self._endpoint(s, endpoint_id)
            e.name = req.name if req.name is not None else e.name
            e.url = req.url if req.url is not None else e.url
            e.event_types = types if types is not None else e.event_types
            e.updated_at = int(time.time())
            return endpoint_object(e)

        return self.ctx.db.transaction(work)

    def delete(self, endpoint_id: str) -> WebhookEndpointDeleted:
        """The endpoint and its delivery log: nothing more is sent to it."""

        def work(s: Session) -> WebhookEndpointDeleted:
            e = self._endpoint(s, endpoint_id)
            for d in s.scalars(select(DeliveryRow).where(DeliveryRow.endpoint_id == e.id)):
                s.delete(d)
            s.delete(e)
            return WebhookEndpointDeleted(id=endpoint_id, deleted=True)

        return self.ctx.db.transaction(work)

    # ---- the delivery log -----------------------------------------------------------------------------------------
    def deliveries(self, endpoint_id: str, req: ListWebhookDeliveriesRequest) -> WebhookDeliveryList:
        with self.ctx.db.session() as s:
            e = self._endpoint(s, endpoint_id)
            q = select(DeliveryRow).where(DeliveryRow.endpoint_id == e.id)
            rows, more = page(s, DeliveryRow, q, after=req.after, limit=req.limit)
            return WebhookDeliveryList.of([delivery_object(d) for d in rows], more)

    def redeliver(self, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
        """Send the delivery again now (delivered, failed or still pending), with a fresh retry window."""

        def work(s: Session) -> WebhookDelivery:
            e = self._endpoint(s, endpoint_id)
            d = s.scalar(select(DeliveryRow).where(DeliveryRow.id == delivery_id, DeliveryRow.endpoint_id == e.id))
            if d is None:
                raise NotFound(
                    f"No delivery found with id '{delivery_id}' for this webhook endpoint.",
                    param="delivery_id",
                    code="webhook_delivery_not_found",
                )
            webhooks.redeliver(d, time.time())
            return delivery_object(d)

        out = self.ctx.db.transaction(work)
        self.ctx.wake_scheduler()
        return out
