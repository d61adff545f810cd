"""The outbox: materialise an audience into message rows, claim them, record outcomes.

The database is the source of truth; RQ carries only lists of row ids. Rows
are claimed atomically (FOR UPDATE SKIP LOCKED on PostgreSQL, the write lock
on SQLite) under a lease, so a duplicated or re-run job finds nothing to do,
and a row whose worker died while it was `sending` becomes `unknown` instead
of being sent a second time.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..database import begin_write, is_postgres
from ..extensions import db
from ..models import utcnow
from ..models.campaigns import (
    CAMPAIGN_SENDING,
    MSG_FAILED,
    MSG_PENDING,
    MSG_SENDING,
    MSG_SENT,
    MSG_SKIPPED,
    MSG_UNKNOWN,
    Campaign,
    Message,
    MessageEvent,
)

LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 4
# Back-off after the 1st, 2nd, 3rd temporary failure.
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30))


def materialise(
    merchant_id: int,
    campaign_id: int,
    customer_ids: Iterable[int],
    channels: Iterable[str],
    occurrence: str = "",
    not_before: datetime | None = None,
) -> int:
    """Insert outbox rows, ignoring ones that exist; return how many are new.

    The unique (campaign, customer, channel, occurrence) key is what makes a
    second fan-out or a second automation run add nothing.
    """
    rows = [
        {
            "merchant_id": merchant_id,
            "campaign_id": campaign_id,
            "customer_id": customer_id,
            "channel": channel,
            "occurrence": occurrence,
            "status": MSG_PENDING,
            "attempts": 0,
            "next_attempt_at": not_before or utcnow(),
            "created_at": utcnow(),
            "updated_at": utcnow(),
        }
        for customer_id in customer_ids
        for channel in channels
    ]
    if not rows:
        return 0
    insert = pg_insert if is_postgres() else sqlite_insert
    statement = insert(Message).values(rows).on_conflict_do_nothing(
        index_elements=["campaign_id", "customer_id", "channel", "occurrence"]
    )
    # SQLAlchemy 2.1 keeps an INSERT's row count only when asked.
    result = db.session.execute(statement, execution_options={"preserve_rowcount": True})
    return max(result.rowcount or 0, 0)


def log_event(message: Message, status: str, detail: str | None = None) -> None:
    db.session.add(
        MessageEvent(
            merchant_id=message.merchant_id,
            message_id=message.id,
            status=status,
            detail=(detail or "")[:500] or None,
        )
    )


def claim(message_ids: list[int], now: datetime | None = None) -> list[Message]:
    """Take the given rows that are due and unclaimed; they become `sending` under a lease."""
    now = now or utcnow()
    begin_write()
    query = (
        select(Message.id)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(
            Message.id.in_(message_ids),
            Message.status == MSG_PENDING,
            Message.next_attempt_at <= now,
            Campaign.status == CAMPAIGN_SENDING,
        )
        .order_by(Message.id)
        .with_for_update(skip_locked=True, of=Message)
    )
    ids = list(db.session.scalars(query))
    if not ids:
        db.session.commit()
        return []
    db.session.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values(status=MSG_SENDING, lease_until=now + LEASE, attempts=Message.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return list(db.session.scalars(select(Message).where(Message.id.in_(ids)).order_by(Message.id)))


def release(messages: list[Message], reason: str) -> None:
    """Give claimed rows back untouched (a pause, or a dropped connection before sending)."""
    begin_write()
    for message in messages:
        if message.status == MSG_SENDING:
            message.status = MSG_PENDING
            message.attempts = max(message.attempts - 1, 0)
            message.lease_until = None
            message.queued_at = None
            log_event(message, MSG_PENDING, reason)
    db.session.commit()


def mark_sent(message: Message, now: datetime | None = None, detail: str | None = None) -> None:
    begin_write()
    message.status = MSG_SENT
    message.in_flight_since = None
    message.sent_at = now or utcnow()
    message.lease_until = None
    message.last_error = None
    log_event(message, MSG_SENT, detail)
    db.session.commit()


def mark_skipped(message: Message, reason: str) -> None:
    begin_write()
    message.status = MSG_SKIPPED
    message.in_flight_since = None
    message.skip_reason = reason
    message.lease_until = None
    log_event(message, MSG_SKIPPED, reason)
    db.session.commit()


def mark_failed(message: Message, error: str) -> None:
    begin_write()
    message.status = MSG_FAILED
    message.in_flight_since = None
    message.last_error = error[:500]
    message.lease_until = None
    log_event(message, MSG_FAILED, error)
    db.session.commit()


def mark_unknown(message: Message, error: str) -> None:
    """The message may have been delivered: record it so, and never resend it blindly."""
    begin_write()
    message.status = MSG_UNKNOWN
    message.last_error = error[:500]
    message.in_flight_since = None
    message.lease_until = None
    log_event(message, MSG_UNKNOWN, error)
    db.session.commit()


def defer(message: Message, until: datetime, reason: str) -> None:
    """Back to pending, due later; the attempt does not count (quiet hours)."""
    begin_write()
    message.status = MSG_PENDING
    message.attempts = max(message.attempts - 1, 0)
    message.next_attempt_at = until
    message.lease_until = None
    message.queued_at = None
    log_event(message, "deferred", reason)
    db.session.commit()


def retry_later(message: Message, error: str, now: datetime | None = None) -> None:
    """A temporary failure: back-off, or a permanent failure after MAX_ATTEMPTS."""
    begin_write()
    now = now or utcnow()
    if message.attempts >= MAX_ATTEMPTS:
        db.session.commit()
        mark_failed(message, f"gave up after {message.attempts} attempts: {error}")
        return
    delay = RETRY_DELAYS[min(message.attempts, len(RETRY_DELAYS)) - 1]
    message.status = MSG_PENDING
    message.in_flight_since = None
    message.last_error = error[:500]
    message.next_attempt_at = now + delay
    message.lease_until = None
    message.queued_at = None
    log_event(message, "retry", f"{error} (next try in {int(delay.total_seconds())} s)")
    db.session.commit()


def expire_leases(now: datetime | None = None) -> dict[str, int]:
    """Repair rows left `sending` by a dead worker.

    A row that was on the wire (in_flight_since set) may have been delivered:
    it becomes `unknown` and is never resent. A row the worker had claimed but
    not yet begun goes back to `pending`. So a crash leaves at most one
    ambiguous message per SMTP connection.
    """
    now = now or utcnow()
    begin_write()
    stale = list(
        db.session.scalars(
            select(Message)
            .where(Message.status == MSG_SENDING, Message.lease_until < now)
            .with_for_update(skip_locked=True)
        )
    )
    report = {"unknown": 0, "released": 0}
    for message in stale:
        message.lease_until = None
        if message.in_flight_since is not None:
            message.status = MSG_UNKNOWN
            message.last_error = "the worker stopped while sending; it may have been delivered"
            log_event(message, MSG_UNKNOWN, message.last_error)
            report["unknown"] += 1
        else:
            message.status = MSG_PENDING
            message.attempts = max(message.attempts - 1, 0)
            message.queued_at = None
            log_event(message, MSG_PENDING, "released: its worker stopped before sending it")
            report["released"] += 1
    db.session.commit()
    return report


def due_unqueued(campaign_id: int, stale_after: timedelta, limit: int, now: datetime) -> list[int]:
    """Pending rows that are due and have no live job (never queued, or queued long ago)."""
    query = (
        select(Message.id)
        .where(
            Message.campaign_id == campaign_id,
            Message.status == MSG_PENDING,
            Message.next_attempt_at <= now,
            (Message.queued_at.is_(None)) | (Message.queued_at < now - stale_after),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    return list(db.session.scalars(query))


def mark_queued(message_ids: list[int], now: datetime) -> None:
    db.session.execute(
        update(Message)
        .where(Message.id.in_(message_ids))
        .values(queued_at=now)
        .execution_options(synchronize_session=False)
    )


def counts(campaign_id: int) -> dict[str, int]:
    """Messages per status, and skipped per reason (`skipped:no_consent`)."""
    rows = db.session.execute(
        select(Message.status, Message.skip_reason, func.count(Message.id))
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.status, Message.skip_reason)
    ).all()
    result = {state: 0 for state in (MSG_PENDING, MSG_SENDING, MSG_SENT, MSG_FAILED,
                                     MSG_SKIPPED, MSG_UNKNOWN)}
    for status, reason, count in rows:
        result[status] = result.get(status, 0) + count
        if status == MSG_SKIPPED and reason:
            result[f"skipped:{reason}"] = result.get(f"skipped:{reason}", 0) + count
    result["total"] = sum(result[s] for s in (MSG_PENDING, MSG_SENDING, MSG_SENT, MSG_FAILED,
                                               MSG_SKIPPED, MSG_UNKNOWN))
    return result
