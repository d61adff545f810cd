"""The audit log: who did what to which record, when and where.

`record()` adds the row to the caller's session and does not commit, so the
entry is saved in the same transaction as the change it describes: either
both are kept or neither is.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from ..extensions import db
from ..models import AuditLog, utcnow

# Actions written by the stamping and voucher services.
STAMP = "stamp"
STAMP_UNDO = "stamp.undo"
VOUCHER_REDEEM = "voucher.redeem"
BIRTHDAY_GIFT_GIVEN = "birthday_gift.given"

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
