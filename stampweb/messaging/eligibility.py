"""May this customer get this marketing message now? Checked at send time.

Consent can change between the moment a campaign's audience is materialised
and the moment its batch is sent: the pre-send check is what makes an
unsubscribe count immediately.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, func, select

from ..database import among
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
    recent_count: int | None = None,
) -> str | None:
    """None when the message may go; otherwise why not (a SKIP_* reason).

    `consent_channel` lets reminder flows require the separate "reminders"
    opt-in instead of marketing consent for the channel. `recent_count` is the
    customer's marketing messages in the cap window when the caller counted
    them already (recent_counts(), once per batch); otherwise it is queried.
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
    if merchant.frequency_cap:
        if recent_count is None:
            recent_count = _recent_count(customer.id, now, exclude_message_id)
        if recent_count >= merchant.frequency_cap:
            return SKIP_CAPPED
    return None


def may_receive(channel: str, merchant: Merchant, *,
                consent_channel: str | None = None) -> ColumnElement[bool]:
    """skip_reason()'s address, suppression and consent rules as SQL over Customer.

    The send pipeline puts it in the statement that marks a message in flight,
    so the check happens at the very moment of sending without a query of its
    own; when it fails, skip_reason() on the fresh row says why. The two must
    agree (tests/test_campaign_sending.py covers each reason on both paths).
    The frequency cap is not in it: it is counted once per batch (recent_counts).
    """
    conditions = [getattr(Customer, f"{consent_channel or channel}_consent") == CONSENT_GRANTED]
    if channel == "email":
        conditions += [Customer.email.is_not(None), Customer.email != "",
                       Customer.email_suppressed_at.is_(None)]
        if consent_channel in (None, "email") and merchant.double_opt_in:
            conditions.append(Customer.email_confirmed_at.is_not(None))
    return and_(*conditions)


def recent_counts(customer_ids: list[int], now: datetime) -> dict[int, int]:
    """Messages sent to each customer in the frequency-cap window, in one query."""
    if not customer_ids:
        return {}
    rows = db.session.execute(
        select(Message.customer_id, func.count(Message.id))
        .where(among(Message.customer_id, customer_ids), Message.status == MSG_SENT,
               Message.sent_at >= now - FREQUENCY_WINDOW)
        .group_by(Message.customer_id)
    ).all()
    return dict(rows)


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
