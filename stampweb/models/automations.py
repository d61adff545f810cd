"""Automations: flows that run themselves, and the record of every firing.

Each flow owns one Campaign row (Campaign.kind = the flow's kind), so its
messages go through the same outbox, consent, cap and quiet-hours rules as a
one-off campaign, and its results and message log work unchanged.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ..tenancy import TenantScoped
from .base import utcnow
from .campaigns import Campaign

# One flow per kind and merchant; the kind is also its campaign's kind.
FLOW_BIRTHDAY = "birthday"
FLOW_WINBACK = "winback"
FLOW_WINBACK2 = "winback2"
FLOW_REWARD_READY = "reward_ready"
FLOW_VOUCHER_EXPIRY = "voucher_expiry"
FLOW_WELCOME = "welcome"
FLOW_TAG_NOTIFY = "tag_notify"
FLOW_KINDS = (
    FLOW_BIRTHDAY, FLOW_WINBACK, FLOW_WINBACK2, FLOW_REWARD_READY, FLOW_VOUCHER_EXPIRY,
    FLOW_WELCOME, FLOW_TAG_NOTIFY,
)


class AutomationFlow(TenantScoped, db.Model):
    """One automation of one merchant: its switch, settings, firing hour and checkpoint."""

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    enabled: Mapped[bool] = mapped_column(default=False)
    # Per-kind settings (days before the birthday, win-back days, …); see
    # stampweb.automations.flows for each kind's keys and defaults.
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    # The merchant's local hour at which the day's firing happens.
    local_hour: Mapped[int] = mapped_column(default=10)
    # Catch-up checkpoint: every local date after this one, up to today, is
    # still to be evaluated (bounded), so downtime never skips a day.
    last_evaluated_local_date: Mapped[date | None]
    enabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    campaign: Mapped[Campaign] = relationship()

    __table_args__ = (
        UniqueConstraint("merchant_id", "kind"),
        Index("ix_automation_flow_enabled", "enabled", "merchant_id"),
    )


class AutomationFiring(TenantScoped, db.Model):
    """A flow fired for one customer and one occurrence (birthday-2026, winback-2026-10-01).

    The unique key is what makes a voucher or a birthday gift happen exactly
    once per occurrence, whatever a double run, a restart or a catch-up does;
    the outbox's own key does the same for the messages.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    flow_id: Mapped[int] = mapped_column(ForeignKey("automation_flow.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id", ondelete="CASCADE"))
    occurrence: Mapped[str] = mapped_column(String(40))
    # The merchant's local date whose evaluation fired it.
    local_date: Mapped[date]
    voucher_id: Mapped[int | None] = mapped_column(ForeignKey("voucher.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("flow_id", "customer_id", "occurrence"),
        Index("ix_automation_firing_merchant_created", "merchant_id", "created_at"),
    )
