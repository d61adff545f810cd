"""The stamp card: program, customers and their consent, cards, visits, vouchers."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ..tenancy import TenantScoped
from .base import utcnow

# Consent per channel. Only GRANTED allows marketing on that channel.
CONSENT_NONE = "none"
CONSENT_PENDING = "pending"  # email: waiting for the double opt-in click
CONSENT_GRANTED = "granted"
CONSENT_WITHDRAWN = "withdrawn"
CONSENT_STATES = (CONSENT_NONE, CONSENT_PENDING, CONSENT_GRANTED, CONSENT_WITHDRAWN)

# Marketing email and wallet pushes, and the separate opt-in for reminders
# about the customer's own card (profile incomplete, reward waiting).
CHANNELS = ("email", "wallet", "reminders")

# Where a consent change came from; recorded with every change.
CONSENT_SOURCES = ("join", "import", "preferences", "unsubscribe", "staff", "api", "confirm")

REWARD_STATE_NONE = "none"
REWARD_STATE_BIRTHDAY = "birthday_gift"

VOUCHER_ACTIVE = "active"
VOUCHER_REDEEMED = "redeemed"
VOUCHER_EXPIRED = "expired"
VOUCHER_VOID = "void"

VOUCHER_KINDS = ("reward", "birthday", "campaign", "welcome", "winback", "manual")

VISIT_STAMP = "stamp"
VISIT_REVERSAL = "reversal"

# Card codes are read aloud and typed by staff: no 0/O, 1/I/L.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def new_code(length: int = 8) -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


def display_name(first_name: str | None, last_name: str | None, email: str | None,
                 phone: str | None, customer_id: int) -> str:
    """How staff and passes name a customer: the name, else the email, phone or number."""
    name = f"{first_name or ''} {last_name or ''}".strip()
    return name or email or phone or f"#{customer_id}"


class Program(TenantScoped, db.Model):
    """The stamp card's rules. One per merchant today; the table allows more."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), default="Stamp card")
    stamps_required: Mapped[int] = mapped_column(default=10)
    reward_text: Mapped[str] = mapped_column(String(200), default="A free coffee")
    birthday_gift_text: Mapped[str] = mapped_column(String(200), default="A birthday treat")
    voucher_validity_days: Mapped[int] = mapped_column(default=30)
    # Two taps within this many minutes on one card give one stamp.
    stamp_cooldown_minutes: Mapped[int] = mapped_column(default=5)
    # At most this many stamps per card per local day (None: no cap).
    daily_stamp_cap: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_program_merchant_id", "merchant_id"),
        CheckConstraint("stamps_required >= 1 AND stamps_required <= 100", name="stamps_required"),
    )


class Customer(TenantScoped, db.Model):
    """A member of a merchant's loyalty program.

    visit_count, last_visit_at and total_spent are kept current when a visit is
    recorded, so segments and the staff page never aggregate the visit table.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(String(80), default="")
    last_name: Mapped[str] = mapped_column(String(80), default="")
    # Lower-cased "first last" for prefix search from the staff page.
    search_name: Mapped[str] = mapped_column(String(161), default="")
    email: Mapped[str | None] = mapped_column(String(254))  # stored lower-case
    phone: Mapped[str | None] = mapped_column(String(20))  # digits, leading + kept
    birthday_month: Mapped[int | None]
    birthday_day: Mapped[int | None]
    birthday_year: Mapped[int | None]
    locale: Mapped[str] = mapped_column(String(10), default="en")
    email_consent: Mapped[str] = mapped_column(String(10), default=CONSENT_NONE)
    wallet_consent: Mapped[str] = mapped_column(String(10), default=CONSENT_NONE)
    reminders_consent: Mapped[str] = mapped_column(String(10), default=CONSENT_NONE)
    email_confirmed_at: Mapped[datetime | None]
    # Hard bounce or complaint: never email this address again.
    email_suppressed_at: Mapped[datetime | None]
    visit_count: Mapped[int] = mapped_column(default=0)
    last_visit_at: Mapped[datetime | None]
    total_spent: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))
    joined_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    cards: Mapped[list[Card]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        # Joining twice with the same email or phone finds the existing member.
        UniqueConstraint("merchant_id", "email"),
        UniqueConstraint("merchant_id", "phone"),
        # Staff search and the customer list (keyset paging by id).
        Index("ix_customer_merchant_name", "merchant_id", "search_name"),
        # Segment rules the builder offers.
        Index("ix_customer_merchant_last_visit", "merchant_id", "last_visit_at"),
        Index("ix_customer_merchant_visits", "merchant_id", "visit_count"),
        Index("ix_customer_merchant_spent", "merchant_id", "total_spent"),
        Index("ix_customer_merchant_birthday", "merchant_id", "birthday_month", "birthday_day"),
        Index("ix_customer_merchant_joined", "merchant_id", "joined_at"),
        Index("ix_customer_merchant_email_consent", "merchant_id", "email_consent"),
    )

    @property
    def display_name(self) -> str:
        return display_name(self.first_name, self.last_name, self.email, self.phone, self.id)

    @property
    def card(self) -> Card | None:
        return self.cards[0] if self.cards else None


class ConsentEvent(TenantScoped, db.Model):
    """One change of one channel's consent: the proof of who agreed to what, when."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # Kept (customer_id NULL) when the customer is deleted: the record of an
    # opt-out must outlive the profile.
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customer.id", ondelete="SET NULL")
    )
    channel: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))
    source: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    # The exact wording the customer saw when agreeing.
    wording: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_consent_event_customer", "customer_id", "created_at"),)


class Card(TenantScoped, db.Model):
    """A customer's stamp card: its balance, its public token and its wallet identity."""

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id", ondelete="CASCADE"))
    program_id: Mapped[int] = mapped_column(ForeignKey("program.id", ondelete="CASCADE"))
    # Short code printed on the card and typed by staff.
    code: Mapped[str] = mapped_column(String(12), default=new_code)
    # Unguessable token of the customer's card page /card/<token>.
    token: Mapped[str] = mapped_column(
        String(43), unique=True, default=lambda: secrets.token_urlsafe(24)
    )
    wallet_serial: Mapped[str] = mapped_column(
        String(36), unique=True, default=lambda: str(uuid.uuid4())
    )
    wallet_auth_token: Mapped[str] = mapped_column(
        String(64), default=lambda: secrets.token_urlsafe(32)
    )
    # Stamps toward the next reward (the ledger in `visit` sums to this).
    stamps: Mapped[int] = mapped_column(default=0)
    rewards_earned: Mapped[int] = mapped_column(default=0)
    reward_state: Mapped[str] = mapped_column(String(16), default=REWARD_STATE_NONE)
    reward_state_expires_at: Mapped[datetime | None]
    last_stamp_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Moves on every change the wallet must pick up.
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="cards")
    program: Mapped[Program] = relationship()

    __table_args__ = (
        UniqueConstraint("merchant_id", "code"),
        UniqueConstraint("customer_id", "program_id"),
        Index("ix_card_merchant_stamps", "merchant_id", "stamps"),
        Index("ix_card_updated", "updated_at"),
        CheckConstraint("stamps >= 0", name="stamps_not_negative"),
    )


class Visit(TenantScoped, db.Model):
    """The stamp ledger: one row per stamping, never deleted.

    A reversal is a compensating row (negative stamps) pointing at the row it
    undoes. After a customer deletes their profile, customer_id and card_id
    become NULL and the row stays for the merchant's counts.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customer.id", ondelete="SET NULL")
    )
    card_id: Mapped[int | None] = mapped_column(ForeignKey("card.id", ondelete="SET NULL"))
    staff_user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    location_id: Mapped[int | None] = mapped_column(
        ForeignKey("location.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(10), default=VISIT_STAMP)
    stamps: Mapped[int] = mapped_column(default=1)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    reverses_id: Mapped[int | None] = mapped_column(
        ForeignKey("visit.id", ondelete="SET NULL"), unique=True
    )
    reason: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(10), default="staff")
    device: Mapped[str | None] = mapped_column(String(300))
    # Replaying the same stamp form (or API Idempotency-Key) finds this row.
    request_key: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("merchant_id", "request_key"),
        Index("ix_visit_merchant_created", "merchant_id", "created_at"),
        Index("ix_visit_card_created", "card_id", "created_at"),
        Index("ix_visit_customer_created", "customer_id", "created_at"),
        Index("ix_visit_location_customer", "location_id", "customer_id"),
    )


class Voucher(TenantScoped, db.Model):
    """Something the customer can redeem: a reward, a birthday gift, a campaign offer."""

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customer.id", ondelete="CASCADE"))
    card_id: Mapped[int | None] = mapped_column(ForeignKey("card.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10), default="reward")
    title: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(12), default=new_code)
    status: Mapped[str] = mapped_column(String(10), default=VOUCHER_ACTIVE)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    redeemed_at: Mapped[datetime | None]
    redeemed_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("user.id", ondelete="SET NULL")
    )
    redeemed_location_id: Mapped[int | None] = mapped_column(
        ForeignKey("location.id", ondelete="SET NULL")
    )
    # The visit that filled the card, for rewards.
    visit_id: Mapped[int | None] = mapped_column(ForeignKey("visit.id", ondelete="SET NULL"))
    # Why it was issued, e.g. {"campaign_id": 4} or {"occurrence": "birthday-2026"}.
    origin: Mapped[dict] = mapped_column(JSON, default=dict)

    customer: Mapped[Customer] = relationship()

    __table_args__ = (
        UniqueConstraint("merchant_id", "code"),
        Index("ix_voucher_customer_status", "customer_id", "status", "expires_at"),
        Index("ix_voucher_merchant_status_expires", "merchant_id", "status", "expires_at"),
    )

    @property
    def is_usable(self) -> bool:
        return self.status == VOUCHER_ACTIVE and (
            self.expires_at is None or self.expires_at > utcnow()
        )


class MailboxMessage(TenantScoped, db.Model):
    """An email kept by the development mailbox (no MAIL_SERVER configured).

    Messages are kept, never dropped, and the merchant can read them in the
    admin: `make run` works end to end without an SMTP server.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    to_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(300))
    message_id: Mapped[str | None] = mapped_column(String(255))
    raw: Mapped[bytes] = mapped_column(db.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_mailbox_message_merchant_created", "merchant_id", "created_at"),)
