"""Webhooks out: tell a merchant's own systems what happened, signed, with retries.

Events: customer.joined, visit.recorded, reward.issued, voucher.redeemed and
customer.unsubscribed. The services announce them with blinker signals after
their commit (stampweb/events.py); the receiver here only checks that the
merchant has an endpoint for the event and enqueues a dispatch job. The job
writes one WebhookDelivery row per endpoint (the delivery log in settings) and
a delivery job for each, which POSTs the JSON body with

    Stampweb-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>

A 2xx answer is delivered; anything else is retried with growing delays, and
after the last attempt the delivery is marked failed. Delivery is at least
once: receivers de-duplicate by the event id (`id`, also `Stampweb-Event-Id`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from flask import current_app, has_app_context
from flask_babel import gettext as _
from sqlalchemy import bindparam, select

from . import events, merchant_facts
from .config import env_bool
from .extensions import db
from .models import (
    Card,
    Customer,
    Visit,
    Voucher,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from .models.api import (
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    DELIVERY_RETRYING,
    WEBHOOK_EVENTS,
)
from .tenancy import tenant

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Stampweb-Signature"
# Delays before attempts 2, 3, …: about nine hours in all, then the delivery fails.
RETRY_DELAYS = (30, 120, 600, 1800, 7200, 21600)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
TIMEOUT_SECONDS = 10
SIGNATURE_TOLERANCE = 300
URL_MAX = 500

_SIGNAL_EVENTS = (
    (events.customer_joined, "customer.joined", "customer_id"),
    (events.visit_recorded, "visit.recorded", "visit_id"),
    (events.reward_issued, "reward.issued", "voucher_id"),
    (events.voucher_redeemed, "voucher.redeemed", "voucher_id"),
    (events.customer_unsubscribed, "customer.unsubscribed", "customer_id"),
)


class WebhookError(ValueError):
    """Bad endpoint settings; `field` names the form field."""

    def __init__(self, field: str, message):
        super().__init__(str(message))
        self.field = field
        self.message = message


# --- signing ---------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Stampweb-Signature header value for `body`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance: int = SIGNATURE_TOLERANCE,
           now: int | None = None) -> bool:
    """What a receiver does: check the HMAC and that the timestamp is recent."""
    parts = dict(item.split("=", 1) for item in (header or "").split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = int(time.time()) if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- wiring -----------------------------------------------------------------------------------


def init_webhooks(app) -> None:
    app.extensions["stampweb_webhooks"] = True
    for signal, event, _id_name in _SIGNAL_EVENTS:
        signal.connect(_RECEIVERS[event], weak=False)


def _make_receiver(event: str, id_name: str):
    def receive(_sender, *, merchant_id: int, **payload) -> None:
        if not has_app_context() or not current_app.extensions.get("stampweb_webhooks"):
            return
        subject_id = payload.get(id_name)
        if subject_id is None:
            return
        try:
            if not _subscribed(merchant_id, event):
                return
            from .tasks.webhooks import enqueue_dispatch

            enqueue_dispatch(merchant_id, event, int(subject_id), str(uuid.uuid4()),
                             _iso(utcnow()))
        except Exception:  # a webhook problem must never fail the stamp that caused it
            log.exception("could not enqueue webhook %s for merchant %s", event, merchant_id)

    receive.__name__ = f"webhook_{event.replace('.', '_')}"
    return receive


_RECEIVERS = {event: _make_receiver(event, id_name) for _s, event, id_name in _SIGNAL_EVENTS}


_endpoint_table = WebhookEndpoint.__table__
# Asked on every stamp, so a Core statement built once and only the column
# needed; it names the merchant itself (the tenant listener sees ORM queries).
_ACTIVE_ENDPOINT_EVENTS = select(_endpoint_table.c.events).where(
    _endpoint_table.c.merchant_id == bindparam("merchant_id"),
    _endpoint_table.c.active.is_(True),
)


def _subscribed(merchant_id: int, event: str) -> bool:
    """Whether an active endpoint of the merchant wants `event` (as WebhookEndpoint.wants)."""
    facts = merchant_facts.known(merchant_id)
    if facts is not None and not facts.has_active_webhooks:
        return False  # read with the logged-in user's merchant: stampweb/merchant_facts.py
    rows = db.session.connection().execute(_ACTIVE_ENDPOINT_EVENTS, {"merchant_id": merchant_id})
    return any(event in (wanted or []) for wanted in rows.scalars())


# --- endpoints (settings) -------------------------------------------------------------------


def _check_url(url: str) -> str:
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise WebhookError("url", _("Enter a full URL starting with https://."))
    if len(url) > URL_MAX:
        raise WebhookError("url", _("At most %(num)d characters.", num=URL_MAX))
    if parts.username or parts.password:
        raise WebhookError("url", _("Leave user name and password out of the URL."))
    return url


def _check_events(chosen) -> list[str]:
    chosen = [event for event in WEBHOOK_EVENTS if event in set(chosen or [])]
    if not chosen:
        raise WebhookError("events", _("Choose at least one event."))
    return chosen


def create_endpoint(merchant_id: int, url: str, events_chosen, description: str = ""
                    ) -> WebhookEndpoint:
    """Add an endpoint with a fresh signing secret; commits."""
    url = _check_url(url)
    chosen = _check_events(events_chosen)
    with tenant(merchant_id):
        endpoint = WebhookEndpoint(
            merchant_id=merchant_id, url=url, events=chosen,
            description=(description or "").strip()[:200],
            secret="whsec_" + secrets.token_urlsafe(32),
        )
        db.session.add(endpoint)
        db.session.commit()
    return endpoint


def list_endpoints(merchant_id: int) -> list[WebhookEndpoint]:
    with tenant(merchant_id):
        return list(db.session.scalars(
            select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        ))


def get_endpoint(merchant_id: int, endpoint_id: int) -> WebhookEndpoint | None:
    with tenant(merchant_id):
        return db.session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


def delete_endpoint(merchant_id: int, endpoint_id: int) -> bool:
    """Remove an endpoint and its log; commits. False if it is not the merchant's."""
    endpoint = get_endpoint(merchant_id, endpoint_id)
    if endpoint is None:
        return False
    with tenant(merchant_id):
        db.session.delete(endpoint)
        db.session.commit()
    return True


def deliveries(merchant_id: int, endpoint_id: int | None = None, limit: int = 50
               ) -> list[WebhookDelivery]:
    """The latest deliveries, newest first (of one endpoint, or all)."""
    statement = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc(),
                                                 WebhookDelivery.id.desc()).limit(limit)
    if endpoint_id is not None:
        statement = statement.where(WebhookDelivery.endpoint_id == endpoint_id)
    with tenant(merchant_id):
        return list(db.session.scalars(statement))


def retry_delivery(merchant_id: int, delivery_id: int) -> bool:
    """Send a failed delivery again now, with a fresh set of attempts; commits."""
    with tenant(merchant_id):
        delivery = db.session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
        )
        if delivery is None or delivery.status != DELIVERY_FAILED:
            return False
        delivery.status = DELIVERY_PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = utcnow()
        db.session.commit()
    from .tasks.webhooks import enqueue_delivery

    enqueue_delivery(merchant_id, delivery_id)
    return True


# --- dispatch: event → delivery rows ---------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True)


def event_data(merchant_id: int, event: str, subject_id: int) -> dict:
    """The `data` of an event: the subject as the API shows it (or its id, if gone)."""
    from .api import services

    with tenant(merchant_id):
        if event in ("customer.joined", "customer.unsubscribed"):
            customer = db.session.get(Customer, subject_id)
            if customer is None:
                return {"customer": {"id": subject_id}}
            return {"customer": _dump(services.customer_out(customer))}
        if event == "visit.recorded":
            visit = db.session.get(Visit, subject_id)
            if visit is None:
                return {"visit": {"id": subject_id}}
            card = db.session.get(Card, visit.card_id) if visit.card_id else None
            return {
                "visit": {
                    "id": visit.id, "customer_id": visit.customer_id, "stamps": visit.stamps,
                    "amount": services.money(visit.amount), "source": visit.source,
                    "location_id": visit.location_id, "created_at": _iso(visit.created_at),
                },
                "card": _dump(services.card_out(card)) if card is not None else None,
            }
        voucher = db.session.get(Voucher, subject_id)
        if voucher is None:
            return {"voucher": {"id": subject_id}}
        return {"voucher": _dump(services.voucher_out(voucher))}


def dispatch(merchant_id: int, event: str, subject_id: int, event_id: str,
             occurred_at: str) -> list[int]:
    """Write a delivery row per subscribed endpoint and enqueue each; returns their ids.

    Running twice for one event (an RQ retry) adds nothing: (endpoint, event id) is unique.
    """
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    envelope = {"id": event_id, "type": event, "created_at": occurred_at,
                "data": event_data(merchant_id, event, subject_id)}
    created: list[int] = []
    with tenant(merchant_id):
        for endpoint in list_endpoints(merchant_id):
            if not endpoint.wants(event):
                continue
            existing = db.session.scalar(select(WebhookDelivery.id).where(
                WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.event_id == event_id))
            if existing is not None:
                continue
            delivery = WebhookDelivery(
                merchant_id=merchant_id, endpoint_id=endpoint.id, event=event,
                event_id=event_id, payload=envelope, status=DELIVERY_PENDING,
                next_attempt_at=utcnow(),
            )
            db.session.add(delivery)
            db.session.flush()
            created.append(delivery.id)
        db.session.commit()
    from .tasks.webhooks import enqueue_delivery

    for delivery_id in created:
        enqueue_delivery(merchant_id, delivery_id)
    return created


# --- delivery: one POST -----------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status: str
    response_status: int | None
    error: str | None
    retry_in: int | None  # seconds until the next attempt, if any


def _private_addresses_allowed() -> bool:
    configured = current_app.config.get("WEBHOOK_ALLOW_PRIVATE_URLS")
    if configured is not None:
        return bool(configured)
    return env_bool("WEBHOOK_ALLOW_PRIVATE_URLS", False)


def _address_problem(url: str) -> str | None:
    """Refuse URLs that resolve to this network (SSRF), unless allowed for development."""
    if _private_addresses_allowed():
        return None
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return f"{host} resolves to a non-public address ({address})"
    return None


def deliver(merchant_id: int, delivery_id: int, now: datetime | None = None) -> Attempt | None:
    """Make one attempt at a delivery and record it; None if there is nothing to do."""
    with tenant(merchant_id):
        delivery = db.session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
            .execution_options(populate_existing=True)
        )
        if delivery is None or delivery.status in (DELIVERY_DELIVERED, DELIVERY_FAILED):
            db.session.rollback()
            return None
        endpoint = delivery.endpoint
        url, secret, active = endpoint.url, endpoint.secret, endpoint.active
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
        event, event_id = delivery.event, delivery.event_id
        attempt_number = delivery.attempts + 1
        db.session.rollback()  # no transaction stays open across the HTTP call

    response_status = None
    error = None
    if not active:
        error = "endpoint disabled"
    else:
        error = _address_problem(url)
    if error is None:
        try:
            response = httpx.post(
                url, content=body, timeout=TIMEOUT_SECONDS, follow_redirects=False,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "stampweb-webhooks/1",
                    SIGNATURE_HEADER: sign(secret, body),
                    "Stampweb-Event": event,
                    "Stampweb-Event-Id": event_id,
                },
            )
            response_status = response.status_code
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]

    now = now or utcnow()
    delivered = error is None
    final = delivered or attempt_number >= MAX_ATTEMPTS or not active
    retry_in = None if final else RETRY_DELAYS[attempt_number - 1]
    status = DELIVERY_DELIVERED if delivered else (DELIVERY_FAILED if final else DELIVERY_RETRYING)
    with tenant(merchant_id):
        delivery = db.session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
            .execution_options(populate_existing=True)
        )
        if delivery is None:
            db.session.rollback()
            return None
        delivery.attempts = attempt_number
        delivery.last_attempt_at = now
        delivery.response_status = response_status
        delivery.last_error = error
        delivery.status = status
        delivery.delivered_at = now if delivered else None
        delivery.next_attempt_at = now + timedelta(seconds=retry_in) if retry_in else None
        db.session.commit()
    if retry_in is not None:
        from .tasks.webhooks import enqueue_delivery

        enqueue_delivery(merchant_id, delivery_id, delay=retry_in)
    return Attempt(delivered, status, response_status, error, retry_in)
