"""May this customer get this marketing message now? Checked at send time.

Consent can change between the moment a campaign's audience is materialised
and the moment its batch is sent: the pre-send check is what makes an
unsubscribe count immediately.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from ..extensions import db
from ..models import CONSENT_GRANTED, Customer, Merchant
from ..models.campaigns import (
    MSG_SENT,
    SKIP_CAPPED,
    SKIP_NO_ADDRESS,
    SKIP_NO_CONSENT,
    SKIP_SUPPRESSED,
    Message,
)

FREQUENCY_WINDOW = timedelta(days=7)


def skip_reason(
    customer: Customer | None,
    channel: str,
    merchant: Merchant,
    now: datetime,
    *,
    consent_channel: str | None = None,
    exclude_message_id: int | None = None,
) -> str | None:
    """None when the message may go; otherwise why not (a SKIP_* reason).

    `consent_channel` lets reminder flows require the separate "reminders"
    opt-in instead of marketing consent for the channel.
    """
    if customer is None:
        return SKIP_NO_ADDRESS  # deleted since the audience was built
    consent = getattr(customer, f"{consent_channel or channel}_consent")
    if channel == "email":
        if not customer.email:
            return SKIP_NO_ADDRESS
        if customer.email_suppressed_at is not None:
            return SKIP_SUPPRESSED
    if consent != CONSENT_GRANTED:
        return SKIP_NO_CONSENT
    if channel == "email" and consent_channel in (None, "email") and (
        customer.email_confirmed_at is None and merchant.double_opt_in
    ):
        return SKIP_NO_CONSENT
    if merchant.frequency_cap and _recent_count(customer.id, now, exclude_message_id) >= (
        merchant.frequency_cap
    ):
        return SKIP_CAPPED
    return None


def _recent_count(customer_id: int, now: datetime, exclude_message_id: int | None) -> int:
    query = select(func.count(Message.id)).where(
        Message.customer_id == customer_id,
        Message.status == MSG_SENT,
        Message.sent_at >= now - FREQUENCY_WINDOW,
    )
    if exclude_message_id is not None:
        query = query.where(Message.id != exclude_message_id)
    return db.session.scalar(query) or 0


def quiet_until(merchant: Merchant, now: datetime) -> datetime | None:
    """When a wallet push held by quiet hours may go (naive UTC), or None if it may go now."""
    zone = ZoneInfo(merchant.timezone)
    local = now.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone)
    start, end = merchant.quiet_hours_start, merchant.quiet_hours_end
    if start == end:
        return None
    hour = local.hour
    quiet = (start <= hour or hour < end) if start > end else (start <= hour < end)
    if not quiet:
        return None
    morning = local.replace(hour=end, minute=0, second=0, microsecond=0)
    if morning <= local:
        morning += timedelta(days=1)
    return morning.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
