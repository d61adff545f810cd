"""Campaigns and the outbox: one row per message, the source of truth of sending.

RQ only carries references to outbox rows; whatever happens to Redis or a
worker, the database says which customer got which message and what became of
every attempt (RELIABILITY.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ..tenancy import TenantScoped
from .base import utcnow

CAMPAIGN_DRAFT = "draft"
CAMPAIGN_SCHEDULED = "scheduled"
CAMPAIGN_SENDING = "sending"
CAMPAIGN_PAUSED = "paused"
CAMPAIGN_SENT = "sent"
CAMPAIGN_CANCELLED = "cancelled"
CAMPAIGN_STATES = (
    CAMPAIGN_DRAFT, CAMPAIGN_SCHEDULED, CAMPAIGN_SENDING, CAMPAIGN_PAUSED,
    CAMPAIGN_SENT, CAMPAIGN_CANCELLED,
)

# Outbox row states. `unknown`: the worker died (or the connection broke)
# after the message may have reached the server; never resent blindly.
MSG_PENDING = "pending"
MSG_SENDING = "sending"
MSG_SENT = "sent"
MSG_FAILED = "failed"
MSG_SKIPPED = "skipped"
MSG_UNKNOWN = "unknown"
MSG_STATES = (MSG_PENDING, MSG_SENDING, MSG_SENT, MSG_FAILED, MSG_SKIPPED, MSG_UNKNOWN)

# Why a message was not sent.
SKIP_NO_CONSENT = "no_consent"
SKIP_CAPPED = "capped"
SKIP_NO_ADDRESS = "no_address"
SKIP_SUPPRESSED = "suppressed"
SKIP_CANCELLED = "cancelled"
SKIP_WALLET_NOT_CONFIGURED = "wallet_not_configured"
SKIP_NO_DEVICE = "no_device"


class Campaign(TenantScoped, db.Model):
    """A message to an audience, one-off or sent by an automation."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    # oneoff, or the automation that owns it (birthday, winback, …).
    kind: Mapped[str] = mapped_column(String(20), default="oneoff")
    status: Mapped[str] = mapped_column(String(10), default=CAMPAIGN_DRAFT)
    # Audience: a saved segment's rules, or a tag (ids kept loose so the
    # audience tables can evolve independently), or rules inline.
    audience: Mapped[dict] = mapped_column(JSON, default=dict)
    channels: Mapped[str] = mapped_column(String(10), default="email")  # email|wallet|both
    subject: Mapped[str] = mapped_column(String(200), default="")
    preheader: Mapped[str] = mapped_column(String(200), default="")
    body_markdown: Mapped[str] = mapped_column(Text, default="")
    wallet_text: Mapped[str] = mapped_column(String(200), default="")
    # Per-language variants: {"ru": {"subject": …, "body_markdown": …, "wallet_text": …}}
    variants: Mapped[dict] = mapped_column(JSON, default=dict)
    voucher_title: Mapped[str | None] = mapped_column(String(200))
    voucher_valid_days: Mapped[int | None]
    scheduled_at: Mapped[datetime | None]  # UTC
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    paused_reason: Mapped[str | None] = mapped_column(String(300))
    # Fan-out checkpoint: the last customer id materialised into the outbox,
    # saved with each batch so a restarted fan-out resumes where it stopped.
    fanout_cursor: Mapped[int] = mapped_column(default=0)
    fanout_done: Mapped[bool] = mapped_column(default=False)
    # Customers who came back within this many days count as brought back.
    attribution_days: Mapped[int] = mapped_column(default=14)
    created_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("user.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_campaign_merchant_status", "merchant_id", "status"),
        Index("ix_campaign_status_scheduled", "status", "scheduled_at"),
    )

    @property
    def channel_list(self) -> list[str]:
        return ["email", "wallet"] if self.channels == "both" else [self.channels]


class Message(TenantScoped, db.Model):
    """The outbox: one row per (campaign, customer, channel, occurrence).

    The unique key makes materialising an audience twice, or an automation
    firing twice for the same occurrence, produce no second message.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customer.id", ondelete="SET NULL")
    )
    channel: Mapped[str] = mapped_column(String(10))
    # '' for one-off campaigns; 'birthday-2026', 'winback-2026-10-01', … for automations.
    occurrence: Mapped[str] = mapped_column(String(40), default="")
    status: Mapped[str] = mapped_column(String(10), default=MSG_PENDING)
    skip_reason: Mapped[str | None] = mapped_column(String(30))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A row in `sending` whose lease passed belongs to a dead worker.
    lease_until: Mapped[datetime | None]
    # Set (and committed) just before the message goes on the wire: only a
    # row with this set can have been delivered by a worker that died.
    in_flight_since: Mapped[datetime | None]
    # When a send job for this row was last enqueued (the reconciler's clock).
    queued_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    # The email's Message-ID header, stable across retries of this row.
    email_message_id: Mapped[str | None] = mapped_column(String(255))
    to_address: Mapped[str | None] = mapped_column(String(254))
    voucher_id: Mapped[int | None] = mapped_column(ForeignKey("voucher.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    campaign: Mapped[Campaign] = relationship()

    __table_args__ = (
        UniqueConstraint("campaign_id", "customer_id", "channel", "occurrence"),
        Index("ix_message_campaign_status", "campaign_id", "status"),
        Index("ix_message_status_next", "status", "next_attempt_at"),
        Index("ix_message_customer_sent", "customer_id", "sent_at"),
        Index("ix_message_merchant_created", "merchant_id", "created_at"),
    )


class MessageEvent(TenantScoped, db.Model):
    """A message's status history: every attempt, deferral and outcome."""

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(10))
    detail: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_message_event_message", "message_id", "created_at"),)
