"""The message log: every outbox row, newest first, with its status history.

Pages by key (`id < before`), never by OFFSET, like the customer list: a
campaign sending while the merchant reads the log adds rows at the top without
shifting the pages underneath.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select

from ..extensions import db
from ..models import Customer, Merchant
from ..models.campaigns import MSG_STATES, Campaign, Message, MessageEvent
from ..tenancy import tenant
from .results import SKIP_REASONS

PAGE_SIZE = 50
CHANNELS = ("email", "wallet")
_LIKE_ESCAPE = "\\"


@dataclass(frozen=True)
class LogFilters:
    """What the log is narrowed to. Dates are the merchant's local calendar days,
    inclusive, and apply to when the message was queued."""

    campaign_id: int | None = None
    channel: str | None = None
    status: str | None = None
    skip_reason: str | None = None
    q: str = ""
    date_from: date | None = None
    date_to: date | None = None

    @property
    def active(self) -> bool:
        return any((self.campaign_id, self.channel, self.status, self.skip_reason,
                    self.q.strip(), self.date_from, self.date_to))


@dataclass
class LogRow:
    message: Message
    campaign_name: str
    customer: Customer | None


@dataclass
class LogPage:
    rows: list[LogRow]
    # Pass as `before` for the next (older) page; None on the last page.
    next_before: int | None


@dataclass
class MessageDetail:
    message: Message
    campaign: Campaign
    customer: Customer | None
    events: list[MessageEvent] = field(default_factory=list)


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _local_midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    return local.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


def search_messages(
    merchant_id: int,
    filters: LogFilters,
    *,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> LogPage:
    """One page of the merchant's outbox, newest first, matching `filters`."""
    query = (
        select(Message, Campaign.name, Customer)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(Customer, Customer.id == Message.customer_id)
        .where(Message.merchant_id == merchant_id)
        .order_by(Message.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(Message.id < before)
    if filters.campaign_id:
        query = query.where(Message.campaign_id == filters.campaign_id)
    if filters.channel:
        query = query.where(Message.channel == filters.channel)
    if filters.status:
        query = query.where(Message.status == filters.status)
    if filters.skip_reason:
        query = query.where(Message.skip_reason == filters.skip_reason)
    text = filters.q.strip().lower()
    if text:
        prefix = _like_prefix(text)
        query = query.where(
            or_(
                Customer.search_name.like(prefix, escape=_LIKE_ESCAPE),
                Customer.search_name.like("% " + prefix, escape=_LIKE_ESCAPE),
                Customer.email.like(prefix, escape=_LIKE_ESCAPE),
                Message.to_address.like(prefix, escape=_LIKE_ESCAPE),
            )
        )
    with tenant(merchant_id):
        if filters.date_from or filters.date_to:
            zone = ZoneInfo(db.session.get(Merchant, merchant_id).timezone)
            if filters.date_from:
                query = query.where(
                    Message.created_at >= _local_midnight_utc(filters.date_from, zone)
                )
            if filters.date_to:
                query = query.where(
                    Message.created_at
                    < _local_midnight_utc(filters.date_to + timedelta(days=1), zone)
                )
        found = db.session.execute(query).all()
    rows = [LogRow(message, name, customer) for message, name, customer in found]
    next_before = rows[limit - 1].message.id if len(rows) > limit else None
    return LogPage(rows=rows[:limit], next_before=next_before)


def message_detail(merchant_id: int, message_id: int) -> MessageDetail | None:
    """One outbox row with its campaign, customer and status history (oldest first);
    None when the merchant has no such message."""
    with tenant(merchant_id):
        row = db.session.execute(
            select(Message, Campaign, Customer)
            .join(Campaign, Campaign.id == Message.campaign_id)
            .outerjoin(Customer, Customer.id == Message.customer_id)
            .where(Message.id == message_id, Message.merchant_id == merchant_id)
        ).first()
        if row is None:
            return None
        message, campaign, customer = row
        events = list(
            db.session.scalars(
                select(MessageEvent)
                .where(MessageEvent.message_id == message.id)
                .order_by(MessageEvent.created_at, MessageEvent.id)
            )
        )
    return MessageDetail(message=message, campaign=campaign, customer=customer, events=events)


def campaign_choices(merchant_id: int) -> list[tuple[int, str]]:
    """(id, name) of the merchant's latest campaigns, newest first (the filter's choices)."""
    with tenant(merchant_id):
        return [
            (cid, name)
            for cid, name in db.session.execute(
                select(Campaign.id, Campaign.name)
                .where(Campaign.merchant_id == merchant_id)
                .order_by(Campaign.id.desc())
                .limit(200)
            )
        ]


STATUS_CHOICES = MSG_STATES
SKIP_REASON_CHOICES = SKIP_REASONS
