"""Merchants (the tenants), their users and locations, and the audit log."""

from __future__ import annotations

import secrets
from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ..tenancy import TenantScoped
from .base import utcnow

ROLE_OWNER = "owner"
ROLE_MANAGER = "manager"
ROLE_STAFF = "staff"
ROLES = (ROLE_OWNER, ROLE_MANAGER, ROLE_STAFF)
# Higher rank may do everything a lower rank may.
ROLE_RANK = {ROLE_STAFF: 1, ROLE_MANAGER: 2, ROLE_OWNER: 3}


class Merchant(db.Model):
    """A business using stampweb: the tenant every other row belongs to."""

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    locale: Mapped[str] = mapped_column(String(10), default="en")
    brand_color: Mapped[str] = mapped_column(String(7), default="#6b3e26")
    logo: Mapped[bytes | None] = mapped_column(db.LargeBinary)
    logo_mimetype: Mapped[str | None] = mapped_column(String(40))
    sender_name: Mapped[str | None] = mapped_column(String(120))
    sender_email: Mapped[str | None] = mapped_column(String(254))
    postal_address: Mapped[str | None] = mapped_column(String(300))
    # Wallet pushes wait outside these local hours [start, end).
    quiet_hours_start: Mapped[int] = mapped_column(default=21)
    quiet_hours_end: Mapped[int] = mapped_column(default=9)
    # At most this many marketing messages per customer per 7 days.
    frequency_cap: Mapped[int] = mapped_column(default=3)
    # Marketing email consent is confirmed by a link unless this is off.
    double_opt_in: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<Merchant {self.slug}>"


class User(TenantScoped, UserMixin, db.Model):
    """Somebody who works for a merchant: owner, manager or staff."""

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=ROLE_STAFF)
    # Part of the login session's id: rotating it logs out every other session.
    session_token: Mapped[str] = mapped_column(
        String(32), default=lambda: secrets.token_hex(16)
    )
    active: Mapped[bool] = mapped_column(default=True)
    # The admin's language; None follows the merchant's default.
    locale: Mapped[str | None] = mapped_column(String(8))
    last_login_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    merchant: Mapped[Merchant] = relationship(lazy="joined")

    __table_args__ = (Index("ix_user_merchant_id", "merchant_id"),)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @property
    def is_active(self) -> bool:
        return self.active

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class Location(TenantScoped, db.Model):
    """A shop of the merchant: where stamps are given and wallet nudges fire."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    address: Mapped[str | None] = mapped_column(String(300))
    latitude: Mapped[float | None]
    longitude: Mapped[float | None]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_location_merchant_id", "merchant_id"),)


class AuditLog(TenantScoped, db.Model):
    """Who did what, when and where: every staff and admin action that changes data."""

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    location_id: Mapped[int | None] = mapped_column(
        ForeignKey("location.id", ondelete="SET NULL")
    )
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[int | None]
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(45))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_audit_log_merchant_created", "merchant_id", "created_at"),
        Index("ix_audit_log_subject", "subject_type", "subject_id"),
    )
