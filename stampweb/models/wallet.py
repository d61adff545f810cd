"""Wallet passes: per-card pass state, Apple device registrations, Google notify log,
and a merchant's own wallet credentials (overriding the installation's)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..sealed import SealedText
from ..tenancy import TenantScoped
from .base import utcnow


class WalletPass(TenantScoped, db.Model):
    """The wallet side of one card: when its pass last changed, and its latest message.

    `modified_at` is whole seconds and strictly increases with every change, so
    the HTTP Last-Modified a device stores always tells two versions apart
    (two changes within one second would otherwise look like one).
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("card.id", ondelete="CASCADE"), unique=True)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The latest campaign text, shown on the back of the Apple pass.
    message: Mapped[str | None] = mapped_column(Text)
    message_at: Mapped[datetime | None]
    # Set once the Google loyalty object exists (created for the save link).
    google_object_id: Mapped[str | None] = mapped_column(String(200))
    google_synced_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_wallet_pass_merchant_modified", "merchant_id", "modified_at"),)


class WalletRegistration(TenantScoped, db.Model):
    """An Apple device that holds a card's pass and wants pushes about it.

    The push token is kept per registration: a phone may have a different
    token for each pass type id, and the latest one the device sent wins.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("card.id", ondelete="CASCADE"))
    device_library_id: Mapped[str] = mapped_column(String(128))
    pass_type_id: Mapped[str] = mapped_column(String(128))
    push_token: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("device_library_id", "pass_type_id", "card_id"),
        # The device's "which of my passes changed?" call, across merchants.
        Index("ix_wallet_registration_device", "device_library_id", "pass_type_id"),
        Index("ix_wallet_registration_card", "card_id"),
        Index("ix_wallet_registration_push_token", "push_token"),
    )


class WalletGoogleNotification(TenantScoped, db.Model):
    """One notifying Google Wallet message: Google allows three per pass per 24 hours,
    and we count them ourselves rather than discover the limit through an error."""

    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("card.id", ondelete="CASCADE"))
    object_id: Mapped[str] = mapped_column(String(200))
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_wallet_google_notification_card", "card_id", "sent_at"),)


class WalletSettings(TenantScoped, db.Model):
    """A merchant's own wallet credentials; each value set here overrides the global one.

    Certificates and keys are stored as PEM text (an uploaded .p12 or an
    encrypted key is decrypted on upload), so no password has to be kept; the
    private keys and the service account are sealed at rest (stampweb/sealed.py).
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    apple_pass_type_id: Mapped[str | None] = mapped_column(String(128))
    apple_team_id: Mapped[str | None] = mapped_column(String(20))
    apple_pass_cert_pem: Mapped[str | None] = mapped_column(Text)
    apple_pass_key_pem: Mapped[str | None] = mapped_column(SealedText)
    apple_wwdr_cert_pem: Mapped[str | None] = mapped_column(Text)
    apns_key_id: Mapped[str | None] = mapped_column(String(20))
    apns_key_pem: Mapped[str | None] = mapped_column(SealedText)
    google_issuer_id: Mapped[str | None] = mapped_column(String(40))
    google_service_account_json: Mapped[str | None] = mapped_column(SealedText)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("merchant_id"),)
