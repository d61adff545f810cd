"""The audit log: who did what to which record, when and where.

`record()` adds the row to the caller's session and does not commit, so the
entry is saved in the same transaction as the change it describes: either
both are kept or neither is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ..extensions import db
from ..models import AuditLog, Location, User, utcnow
from ..tenancy import tenant

# Actions written by the stamping and voucher services.
STAMP = "stamp"
STAMP_UNDO = "stamp.undo"  # staff, within 10 minutes of the tap
STAMP_REVERSE = "stamp.reverse"  # a manager, at any time, with a reason
VOUCHER_REDEEM = "voucher.redeem"
BIRTHDAY_GIFT_GIVEN = "birthday_gift.given"
AUDIT_EXPORT = "audit.export"

MAX_DETAIL_TEXT = 300


def record(
    merchant_id: int,
    user_id: int | None,
    action: str,
    subject_type: str | None,
    subject_id: int | None,
    detail: dict[str, Any] | None = None,
    location_id: int | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> AuditLog:
    """Add one audit entry to the current transaction and return it (unflushed)."""
    entry = AuditLog(**_values(merchant_id, user_id, action, subject_type, subject_id, detail,
                               location_id, ip, now))
    db.session.add(entry)
    return entry


_INSERT = insert(AuditLog.__table__)


def insert_now(
    connection: Connection,
    merchant_id: int,
    user_id: int | None,
    action: str,
    subject_type: str | None,
    subject_id: int | None,
    detail: dict[str, Any] | None = None,
    location_id: int | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> None:
    """Write one audit entry on `connection` now, in its transaction, without the ORM.

    For hot paths that run on SQLAlchemy Core (stamping); the row is the one
    `record()` would add.
    """
    connection.execute(_INSERT, _values(merchant_id, user_id, action, subject_type, subject_id,
                                        detail, location_id, ip, now))


def _values(merchant_id, user_id, action, subject_type, subject_id, detail, location_id, ip,
            now) -> dict[str, Any]:
    return {
        "merchant_id": merchant_id,
        "user_id": user_id,
        "location_id": location_id,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "detail": _json_safe(detail or {}),
        "ip": (ip or None) and ip[:45],
        "created_at": now or utcnow(),
    }


def _json_safe(value: Any) -> Any:
    """The detail goes into a JSON column: Decimals and datetimes become strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and len(value) > MAX_DETAIL_TEXT:
        return value[:MAX_DETAIL_TEXT]
    return value


# --- reading the log back: the activity page and its CSV export ---------------------

PAGE_SIZE = 100
EXPORT_COLUMNS = (
    "time_utc", "action", "user_email", "location", "subject_type", "subject_id",
    "reason", "device", "ip", "detail",
)


@dataclass(frozen=True)
class Entry:
    """One audit row with the names a person needs: who (email) and where (location)."""

    id: int
    created_at: datetime
    action: str
    user_email: str | None
    location_name: str | None
    subject_type: str | None
    subject_id: int | None
    detail: dict
    ip: str | None

    @property
    def reason(self) -> str | None:
        return self.detail.get("reason") or None

    @property
    def device(self) -> str | None:
        return self.detail.get("device") or None


def _entries_query(merchant_id: int):
    # Users and locations are the merchant's own; the outer joins keep entries
    # whose user or location has since been deleted (their ids are SET NULL).
    return (
        select(AuditLog, User.email, Location.name)
        .outerjoin(User, User.id == AuditLog.user_id)
        .outerjoin(Location, Location.id == AuditLog.location_id)
        .where(AuditLog.merchant_id == merchant_id)
        .order_by(AuditLog.id.desc())
    )


def _entry(row) -> Entry:
    log, email, location = row
    return Entry(log.id, log.created_at, log.action, email, location, log.subject_type,
                 log.subject_id, log.detail or {}, log.ip)


def entries(merchant_id: int, *, action: str | None = None, before_id: int | None = None,
            limit: int = PAGE_SIZE) -> list[Entry]:
    """The newest entries first; `before_id` pages back, `action` keeps one kind."""
    query = _entries_query(merchant_id)
    if action:
        query = query.where(AuditLog.action == action)
    if before_id:
        query = query.where(AuditLog.id < before_id)
    with tenant(merchant_id):
        return [_entry(row) for row in db.session.execute(query.limit(limit))]


def actions(merchant_id: int) -> list[str]:
    """The kinds of entry this merchant's log holds, for the filter."""
    with tenant(merchant_id):
        return sorted(db.session.scalars(
            select(AuditLog.action).where(AuditLog.merchant_id == merchant_id).distinct()
        ))


def export_csv(merchant_id: int, user_id: int | None) -> Iterator[str]:
    """The whole log as CSV text chunks, oldest first; the export itself is logged."""
    from .csv_io import csv_safe  # csv_io records into this log; import late

    with tenant(merchant_id):
        record(merchant_id, user_id, AUDIT_EXPORT, None, None)
        db.session.commit()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    yield "\ufeff"  # Excel reads the accents
    writer.writerow(EXPORT_COLUMNS)
    last_id = 0
    while True:
        query = _entries_query(merchant_id).where(AuditLog.id > last_id)
        query = query.order_by(None).order_by(AuditLog.id).limit(1000)
        with tenant(merchant_id):
            batch = [_entry(row) for row in db.session.execute(query)]
            db.session.expunge_all()
        if not batch:
            break
        for entry in batch:
            writer.writerow([csv_safe(value) for value in (
                entry.created_at.replace(microsecond=0).isoformat() + "Z",
                entry.action, entry.user_email, entry.location_name, entry.subject_type,
                entry.subject_id, entry.reason, entry.device, entry.ip,
                json.dumps(entry.detail, ensure_ascii=False, sort_keys=True),
            )])
        last_id = batch[-1].id
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
