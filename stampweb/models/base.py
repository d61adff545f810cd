"""Shared column helpers.

Times are stored as naive UTC datetimes: SQLite has no time zone type, so
naive UTC is the one representation that reads back the same on both engines.
They are shown in the merchant's time zone (see stampweb.timeutil).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
