"""The integration API: keys, idempotency records, webhook endpoints and their delivery log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ..tenancy import TenantScoped
from .base import utcnow

SCOPE_READ = "read"
SCOPE_WRITE = "write"  # implies read
API_SCOPES = (SCOPE_READ, SCOPE_WRITE)

WEBHOOK_EVENTS = (
    "customer.joined",
    "visit.recorded",
    "reward.issued",
    "voucher.redeemed",
    "customer.unsubscribed",
)

DELIVERY_PENDING = "pending"
DELIVERY_RETRYING = "retrying"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"
DELIVERY_STATES = (DELIVERY_PENDING, DELIVERY_RETRYING, DELIVERY_DELIVERED, DELIVERY_FAILED)


class ApiKey(TenantScoped, db.Model):
    """A merchant's key for POS systems and scripts. Only its hash is kept.

    `prefix` (the start of the key, shown in the admin) finds the row; the
    SHA-256 of the whole key is then compared in constant time. A key is high
    entropy (32 random bytes), so a fast hash is enough: there is nothing to
    brute-force that a slow hash would protect.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    prefix: Mapped[str] = mapped_column(String(20), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(10), default=SCOPE_WRITE)
    created_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("user.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_api_key_merchant_created", "merchant_id", "created_at"),)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        return scope == SCOPE_READ or self.scope == SCOPE_WRITE


class IdempotencyRecord(TenantScoped, db.Model):
    """The first answer to a POST sent with an `Idempotency-Key`, replayed to its retries.

    The row is inserted (and committed) before the request does its work, with
    no response yet: that insert is the claim, and the unique key makes a
    concurrent duplicate fail to claim, so it waits for the answer instead of
    doing the work twice.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_key.id", ondelete="SET NULL"))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    # NULL while the first request is still being handled.
    response_status: Mapped[int | None]
    response_body: Mapped[dict | None] = mapped_column(JSON)
    response_headers: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("merchant_id", "key"),
        Index("ix_idempotency_record_created", "created_at"),
    )


class WebhookEndpoint(TenantScoped, db.Model):
    """A URL of the merchant's that is told about events, signed with `secret`."""

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(String(200), default="")
    # Signing secret: kept in clear because every delivery is signed with it.
    secret: Mapped[str] = mapped_column(String(80))
    events: Mapped[list] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_webhook_endpoint_merchant", "merchant_id", "active"),)

    def wants(self, event: str) -> bool:
        return self.active and event in (self.events or [])


class WebhookDelivery(TenantScoped, db.Model):
    """One event sent (or being sent) to one endpoint: the delivery log in settings."""

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE")
    )
    event: Mapped[str] = mapped_column(String(40))
    # The event's id, the same for every endpoint: receivers de-duplicate by it.
    event_id: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(10), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    response_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]

    endpoint: Mapped[WebhookEndpoint] = relationship()

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_delivery_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_delivery_merchant_created", "merchant_id", "created_at"),
    )
