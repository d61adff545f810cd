"""Membership: joining, consent, preferences, data export and deletion.

Every consent change goes through `set_consent` (or, inside a larger unit of
work here, `_change_consent`), which writes a ConsentEvent with the time,
source, IP, user agent and the exact wording the customer saw. Marketing email
needs a confirmed address when the merchant keeps double opt-in on: asking for
it makes the state 'pending' and sends a confirmation link; only the POST on
the confirmation page makes it 'granted'.

Public functions take plain ids and values, run in their own transaction and
commit; emails are enqueued and events sent only after the commit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from flask_babel import lazy_gettext as _l
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from .. import events
from ..database import begin_write
from ..extensions import db
from ..i18n import LANGUAGES
from ..models import (
    CHANNELS,
    CONSENT_GRANTED,
    CONSENT_NONE,
    CONSENT_PENDING,
    CONSENT_SOURCES,
    CONSENT_STATES,
    CONSENT_WITHDRAWN,
    Card,
    ConsentEvent,
    Customer,
    Merchant,
    Program,
    Visit,
    Voucher,
    utcnow,
)
from ..tenancy import tenant
from ..validation import normalize_email_address

MAX_NAME_LENGTH = 80
MIN_PHONE_DIGITS = 6
MAX_PHONE_DIGITS = 15  # E.164
# Asking again for a confirmation email sooner than this sends nothing new, so
# the join form cannot be used to flood somebody's inbox.
CONFIRMATION_RESEND_AFTER = timedelta(hours=1)

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_PHONE_PUNCTUATION = re.compile(r"[\s\-().]")


class MembershipError(ValueError):
    """Bad input; `field` names the form field the message belongs next to."""

    def __init__(self, field: str, message):
        super().__init__(str(field))
        self.field = field
        self.message = message


class CustomerNotFound(LookupError):
    """No such customer for this merchant (deleted, or never existed)."""


@dataclass(frozen=True)
class JoinResult:
    customer_id: int
    card_token: str
    created: bool
    confirmation_needed: bool
    # Whether the member has an email address we could send their card link to.
    email_on_file: bool = False


# --- input checks ----------------------------------------------------------------


def normalize_phone(value: str | None) -> str | None:
    """Digits with a leading + kept; spaces, dashes, dots and brackets dropped.

    '00' as an international prefix becomes '+'. Raises MembershipError when
    what is left is not a plausible phone number.
    """
    if value is None or not value.strip():
        return None
    compact = _PHONE_PUNCTUATION.sub("", value.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    digits = compact[1:] if compact.startswith("+") else compact
    if (
        not digits.isascii()
        or not digits.isdigit()
        or not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS
    ):
        raise MembershipError("phone", _l("Enter a phone number, e.g. +44 20 7946 0958."))
    return compact


def normalize_email(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return normalize_email_address(value)
    except ValueError as exc:
        raise MembershipError("email", _l("Enter a valid email address.")) from exc


def _clean_name(field: str, value: str | None, *, required: bool) -> str:
    name = (value or "").strip()
    if required and not name:
        raise MembershipError(field, _l("Tell us your first name."))
    if len(name) > MAX_NAME_LENGTH:
        raise MembershipError(
            field, _l("Use at most %(n)d characters.", n=MAX_NAME_LENGTH)
        )
    if _CONTROL_CHARS.search(name):
        raise MembershipError(field, _l("Use letters, spaces and punctuation only."))
    return name


def check_birthday(
    day: int | None, month: int | None, year: int | None
) -> tuple[int | None, int | None, int | None]:
    """Day and month together or neither; 29 February is fine; the year is optional."""
    if day is None and month is None:
        if year is not None:
            raise MembershipError("birthday_day", _l("Choose the day and month as well."))
        return None, None, None
    if day is None or month is None:
        raise MembershipError("birthday_day", _l("Choose both the day and the month."))
    if year is not None and not 1900 <= year <= date.today().year:
        raise MembershipError("birthday_year", _l("Enter a year such as 1990, or leave it empty."))
    try:
        # 2000 is a leap year: without a year, 29 February is a valid birthday.
        date(year if year is not None else 2000, month, day)
    except ValueError as exc:
        raise MembershipError("birthday_day", _l("That day does not exist in that month.")) from exc
    return day, month, year


def _check_locale(locale: str) -> str:
    if locale not in LANGUAGES:
        raise MembershipError("locale", _l("Choose one of the languages offered."))
    return locale


# --- consent ----------------------------------------------------------------------

_CONSENT_COLUMN = {
    "email": "email_consent",
    "wallet": "wallet_consent",
    "reminders": "reminders_consent",
}


def consent_of(customer: Customer, channel: str) -> str:
    return getattr(customer, _CONSENT_COLUMN[channel])


def _last_consent_event(customer_id: int, channel: str) -> ConsentEvent | None:
    return db.session.scalars(
        select(ConsentEvent)
        .filter_by(customer_id=customer_id, channel=channel)
        .order_by(ConsentEvent.created_at.desc(), ConsentEvent.id.desc())
        .limit(1)
    ).first()


def _change_consent(
    customer: Customer,
    merchant: Merchant,
    channel: str,
    state: str,
    *,
    source: str,
    ip: str | None = None,
    user_agent: str | None = None,
    wording: str | None = None,
    user_id: int | None = None,
) -> list[Callable[[], None]]:
    """Change one channel's consent in the current transaction.

    Returns what to do after the commit (send a confirmation email, announce an
    unsubscribe). Setting the state a channel already has records nothing,
    except that a pending email opt-in asked for again after an hour sends a
    fresh confirmation link.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if state not in CONSENT_STATES:
        raise ValueError(f"unknown consent state {state!r}")
    if source not in CONSENT_SOURCES:
        raise ValueError(f"unknown consent source {source!r}")

    after: list[Callable[[], None]] = []
    current = consent_of(customer, channel)
    if channel == "email" and state in (CONSENT_GRANTED, CONSENT_PENDING):
        if not customer.email:
            raise MembershipError(
                "email_marketing", _l("We need an email address to send you email.")
            )
        needs_confirmation = (
            merchant.double_opt_in and source != "confirm" and customer.email_confirmed_at is None
        )
        if state == CONSENT_GRANTED and needs_confirmation:
            state = CONSENT_PENDING
        if state == CONSENT_PENDING:
            if current == CONSENT_GRANTED:
                return after
            if current == CONSENT_PENDING:
                last = _last_consent_event(customer.id, "email")
                if last is not None and last.created_at > utcnow() - CONFIRMATION_RESEND_AFTER:
                    return after
            after.append(_enqueue_confirmation(customer.id))
    if state == current and state != CONSENT_PENDING:
        return after

    setattr(customer, _CONSENT_COLUMN[channel], state)
    if channel == "email" and state == CONSENT_GRANTED and source == "confirm":
        customer.email_confirmed_at = utcnow()
    db.session.add(
        ConsentEvent(
            merchant_id=customer.merchant_id,
            customer_id=customer.id,
            channel=channel,
            state=state,
            source=source,
            ip=(ip or None) and ip[:45],
            user_agent=(user_agent or None) and user_agent[:300],
            wording=wording,
            user_id=user_id,
        )
    )
    return after


def _enqueue_confirmation(customer_id: int) -> Callable[[], None]:
    def run() -> None:
        from ..messaging.transactional import enqueue_confirmation_email

        enqueue_confirmation_email(customer_id)

    return run


def _announce_unsubscribe(merchant_id: int, customer_id: int) -> Callable[[], None]:
    def run() -> None:
        events.send(events.customer_unsubscribed, merchant_id=merchant_id, customer_id=customer_id)

    return run


def _run_after_commit(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        action()


def _load_for_update(customer_id: int) -> Customer:
    """The customer row, locked for this transaction (call begin_write() first)."""
    customer = db.session.scalars(
        select(Customer).filter_by(id=customer_id).with_for_update()
    ).first()
    if customer is None:
        raise CustomerNotFound(customer_id)
    return customer


def _merchant(merchant_id: int) -> Merchant:
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
        raise CustomerNotFound(f"merchant {merchant_id}")
    return merchant


def set_consent(
    merchant_id: int,
    customer_id: int,
    channel: str,
    state: str,
    *,
    source: str,
    ip: str | None = None,
    user_agent: str | None = None,
    wording: str | None = None,
    user_id: int | None = None,
) -> str:
    """Change one channel's consent, recording who, when, where and what they saw.

    Asking for 'granted' on email while the merchant uses double opt-in (and
    the address is not confirmed yet) gives 'pending' and sends the
    confirmation link. Returns the channel's state afterwards.
    """
    with tenant(merchant_id):
        begin_write()
        try:
            customer = _load_for_update(customer_id)
            before = consent_of(customer, channel) if channel in CHANNELS else None
            after = _change_consent(
                customer,
                _merchant(merchant_id),
                channel,
                state,
                source=source,
                ip=ip,
                user_agent=user_agent,
                wording=wording,
                user_id=user_id,
            )
            result = consent_of(customer, channel)
            if result == CONSENT_WITHDRAWN and before != CONSENT_WITHDRAWN:
                after.append(_announce_unsubscribe(merchant_id, customer_id))
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    _run_after_commit(after)
    return result


def confirm_email(
    merchant_id: int,
    customer_id: int,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    wording: str | None = None,
) -> bool:
    """The customer confirmed their address (the POST on the confirmation page).

    Pending becomes granted and the address counts as confirmed. Confirming
    again is harmless. Returns False if there was nothing to confirm (the
    customer withdrew, or never asked): a stale link grants nothing.
    """
    with tenant(merchant_id):
        begin_write()
        try:
            customer = _load_for_update(customer_id)
            current = customer.email_consent
            if current == CONSENT_PENDING:
                _change_consent(
                    customer,
                    _merchant(merchant_id),
                    "email",
                    CONSENT_GRANTED,
                    source="confirm",
                    ip=ip,
                    user_agent=user_agent,
                    wording=wording,
                )
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    return current in (CONSENT_PENDING, CONSENT_GRANTED)


def unsubscribe_all(
    merchant_id: int,
    customer_id: int,
    source: str = "unsubscribe",
    ip: str | None = None,
    user_agent: str | None = None,
    wording: str | None = None,
    channels: tuple[str, ...] = CHANNELS,
) -> bool:
    """Withdraw every marketing channel at once. Idempotent.

    Returns True when something changed; only then is
    events.customer_unsubscribed sent (once).
    """
    with tenant(merchant_id):
        begin_write()
        try:
            customer = _load_for_update(customer_id)
            merchant = _merchant(merchant_id)
            before = [consent_of(customer, channel) for channel in channels]
            for channel in channels:
                _change_consent(
                    customer,
                    merchant,
                    channel,
                    CONSENT_WITHDRAWN,
                    source=source,
                    ip=ip,
                    user_agent=user_agent,
                    wording=wording,
                )
            changed = before != [consent_of(customer, channel) for channel in channels]
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    if changed:
        _announce_unsubscribe(merchant_id, customer_id)()
    return changed


# --- joining ------------------------------------------------------------------------


def _find_member(email: str | None, phone: str | None) -> Customer | None:
    """The existing member with this email, else this phone (current tenant)."""
    for column, value in ((Customer.email, email), (Customer.phone, phone)):
        if value:
            found = db.session.scalars(select(Customer).where(column == value)).first()
            if found is not None:
                return found
    return None


def _card_of(customer: Customer) -> Card:
    """The customer's card on the merchant's (first) program, made if missing."""
    card = db.session.scalars(
        select(Card).filter_by(customer_id=customer.id).order_by(Card.id).limit(1)
    ).first()
    if card is not None:
        return card
    program = db.session.scalars(select(Program).order_by(Program.id).limit(1)).first()
    if program is None:
        raise RuntimeError(f"merchant {customer.merchant_id} has no program")
    card = Card(merchant_id=customer.merchant_id, customer_id=customer.id, program_id=program.id)
    db.session.add(card)
    db.session.flush()
    return card


def join(
    merchant_id: int,
    *,
    first_name: str,
    last_name: str = "",
    email: str | None = None,
    phone: str | None = None,
    birthday_day: int | None = None,
    birthday_month: int | None = None,
    birthday_year: int | None = None,
    locale: str,
    email_marketing: bool,
    wallet_marketing: bool = False,
    ip: str | None = None,
    user_agent: str | None = None,
    wording: str | None = None,
    source: str = "join",
) -> JoinResult:
    """Make somebody a member, or find them if their email or phone is known.

    An existing member's profile is left as it is (anyone can type anyone's
    email address); ticking the marketing box again may still ask for email
    consent, which the address's owner confirms by the link.
    """
    first_name = _clean_name("first_name", first_name, required=True)
    last_name = _clean_name("last_name", last_name, required=False)
    email = normalize_email(email)
    phone = normalize_phone(phone)
    if not email and not phone:
        raise MembershipError("email", _l("Give an email address or a phone number."))
    if email_marketing and not email:
        raise MembershipError("email", _l("Give an email address to get offers by email."))
    birthday_day, birthday_month, birthday_year = check_birthday(
        birthday_day, birthday_month, birthday_year
    )
    locale = _check_locale(locale)

    with tenant(merchant_id):
        for attempt in range(3):
            begin_write()
            try:
                merchant = _merchant(merchant_id)
                customer = _find_member(email, phone)
                created = customer is None
                if created:
                    customer = Customer(
                        merchant_id=merchant_id,
                        first_name=first_name,
                        last_name=last_name,
                        search_name=f"{first_name} {last_name}".strip().lower(),
                        email=email,
                        phone=phone,
                        birthday_day=birthday_day,
                        birthday_month=birthday_month,
                        birthday_year=birthday_year,
                        locale=locale,
                    )
                    db.session.add(customer)
                    db.session.flush()
                card = _card_of(customer)
                after: list[Callable[[], None]] = []
                wanted = [("email", email_marketing), ("wallet", wallet_marketing)]
                for channel, ticked in wanted:
                    if ticked:
                        after += _change_consent(
                            customer,
                            merchant,
                            channel,
                            CONSENT_GRANTED,
                            source=source,
                            ip=ip,
                            user_agent=user_agent,
                            wording=wording,
                        )
                result = JoinResult(
                    customer_id=customer.id,
                    card_token=card.token,
                    created=created,
                    confirmation_needed=customer.email_consent == CONSENT_PENDING,
                    email_on_file=bool(customer.email),
                )
                db.session.commit()
                break
            except IntegrityError:
                # Two joins with the same email raced (PostgreSQL), or a new
                # card code collided: look again; the other join's row is there.
                db.session.rollback()
                if attempt == 2:
                    raise
            except BaseException:
                db.session.rollback()
                raise
    _run_after_commit(after)
    if result.created:
        events.send(events.customer_joined, merchant_id=merchant_id, customer_id=result.customer_id)
    return result


# --- preferences ----------------------------------------------------------------------


@dataclass(frozen=True)
class PreferencesResult:
    confirmation_needed: bool
    unsubscribed: bool


def update_preferences(
    merchant_id: int,
    customer_id: int,
    *,
    first_name: str,
    last_name: str = "",
    birthday_day: int | None = None,
    birthday_month: int | None = None,
    birthday_year: int | None = None,
    locale: str,
    consents: dict[str, bool],
    ip: str | None = None,
    user_agent: str | None = None,
    wording: dict[str, str] | None = None,
    source: str = "preferences",
) -> PreferencesResult:
    """Save the preferences page: name, birthday, language and per-channel opt-ins.

    A ticked channel asks for consent (email may need confirming); an unticked
    one that was granted or pending is withdrawn; one never given stays 'none'.
    All or nothing: bad input changes nothing.
    """
    first_name = _clean_name("first_name", first_name, required=True)
    last_name = _clean_name("last_name", last_name, required=False)
    birthday_day, birthday_month, birthday_year = check_birthday(
        birthday_day, birthday_month, birthday_year
    )
    locale = _check_locale(locale)
    wording = wording or {}

    with tenant(merchant_id):
        begin_write()
        try:
            customer = _load_for_update(customer_id)
            merchant = _merchant(merchant_id)
            customer.first_name = first_name
            customer.last_name = last_name
            customer.search_name = f"{first_name} {last_name}".strip().lower()
            customer.birthday_day = birthday_day
            customer.birthday_month = birthday_month
            customer.birthday_year = birthday_year
            customer.locale = locale
            after: list[Callable[[], None]] = []
            withdrew = False
            for channel in CHANNELS:
                if channel not in consents:
                    continue
                current = consent_of(customer, channel)
                if consents[channel]:
                    target = CONSENT_GRANTED
                elif current in (CONSENT_GRANTED, CONSENT_PENDING):
                    target = CONSENT_WITHDRAWN
                    withdrew = True
                else:
                    continue
                after += _change_consent(
                    customer,
                    merchant,
                    channel,
                    target,
                    source=source,
                    ip=ip,
                    user_agent=user_agent,
                    wording=wording.get(channel),
                )
            result = PreferencesResult(
                confirmation_needed=customer.email_consent == CONSENT_PENDING
                and bool(consents.get("email")),
                unsubscribed=withdrew,
            )
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    if withdrew:
        after.append(_announce_unsubscribe(merchant_id, customer_id))
    _run_after_commit(after)
    return result


# --- data export and deletion ------------------------------------------------------------


def _iso(value) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def export_customer_data(merchant_id: int, customer_id: int) -> dict:
    """Everything stampweb keeps about one customer, as JSON-ready values (times in UTC)."""
    with tenant(merchant_id):
        customer = db.session.scalars(select(Customer).filter_by(id=customer_id)).first()
        if customer is None:
            raise CustomerNotFound(customer_id)
        merchant = _merchant(merchant_id)
        consent_events = db.session.scalars(
            select(ConsentEvent)
            .filter_by(customer_id=customer_id)
            .order_by(ConsentEvent.created_at, ConsentEvent.id)
        ).all()
        visits = db.session.scalars(
            select(Visit).filter_by(customer_id=customer_id).order_by(Visit.created_at, Visit.id)
        ).all()
        vouchers = db.session.scalars(
            select(Voucher)
            .filter_by(customer_id=customer_id)
            .order_by(Voucher.issued_at, Voucher.id)
        ).all()
        card = customer.card
        return {
            "exported_at": _iso(utcnow()),
            "merchant": {"name": merchant.name, "postal_address": merchant.postal_address},
            "profile": {
                "first_name": customer.first_name,
                "last_name": customer.last_name,
                "email": customer.email,
                "phone": customer.phone,
                "birthday": {
                    "day": customer.birthday_day,
                    "month": customer.birthday_month,
                    "year": customer.birthday_year,
                },
                "language": customer.locale,
                "joined_at": _iso(customer.joined_at),
                "email_confirmed_at": _iso(customer.email_confirmed_at),
                "visit_count": customer.visit_count,
                "last_visit_at": _iso(customer.last_visit_at),
                "total_spent": _money(customer.total_spent),
            },
            "consents": {channel: consent_of(customer, channel) for channel in CHANNELS},
            "consent_history": [
                {
                    "at": _iso(event.created_at),
                    "channel": event.channel,
                    "state": event.state,
                    "source": event.source,
                    "ip": event.ip,
                    "user_agent": event.user_agent,
                    "wording": event.wording,
                }
                for event in consent_events
            ],
            "card": None
            if card is None
            else {
                "code": card.code,
                "stamps": card.stamps,
                "stamps_required": card.program.stamps_required,
                "rewards_earned": card.rewards_earned,
                "created_at": _iso(card.created_at),
            },
            "visits": [
                {
                    "at": _iso(visit.created_at),
                    "kind": visit.kind,
                    "stamps": visit.stamps,
                    "amount": _money(visit.amount),
                }
                for visit in visits
            ],
            "vouchers": [
                {
                    "title": voucher.title,
                    "kind": voucher.kind,
                    "code": voucher.code,
                    "status": voucher.status,
                    "issued_at": _iso(voucher.issued_at),
                    "expires_at": _iso(voucher.expires_at),
                    "redeemed_at": _iso(voucher.redeemed_at),
                }
                for voucher in vouchers
            ],
        }


def delete_customer(
    merchant_id: int,
    customer_id: int,
    *,
    source: str = "preferences",
    ip: str | None = None,
    user_agent: str | None = None,
) -> None:
    """Remove the customer, their card and vouchers; keep their visits anonymised.

    Consents are withdrawn first so the record of the opt-out outlives the
    profile. Visits and consent events keep merchant_id with customer_id and
    card_id set to NULL, so the merchant's counts stay right. The NULLs are
    written here rather than left to ON DELETE SET NULL, so the result is the
    same whatever the database enforces.
    """
    unsubscribe_all(merchant_id, customer_id, source=source, ip=ip, user_agent=user_agent)
    with tenant(merchant_id):
        begin_write()
        try:
            _load_for_update(customer_id)
            card_ids = select(Card.id).where(Card.customer_id == customer_id)
            db.session.execute(
                update(Visit)
                .where((Visit.customer_id == customer_id) | Visit.card_id.in_(card_ids))
                .values(customer_id=None, card_id=None)
                .execution_options(synchronize_session=False)
            )
            db.session.execute(
                update(ConsentEvent)
                .where(ConsentEvent.customer_id == customer_id)
                .values(customer_id=None)
                .execution_options(synchronize_session=False)
            )
            db.session.execute(
                delete(Voucher)
                .where(Voucher.customer_id == customer_id)
                .execution_options(synchronize_session=False)
            )
            db.session.execute(
                delete(Card)
                .where(Card.customer_id == customer_id)
                .execution_options(synchronize_session=False)
            )
            db.session.execute(
                delete(Customer)
                .where(Customer.id == customer_id)
                .execution_options(synchronize_session=False)
            )
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise


__all__ = [
    "CONSENT_NONE",
    "CustomerNotFound",
    "JoinResult",
    "MembershipError",
    "PreferencesResult",
    "check_birthday",
    "confirm_email",
    "consent_of",
    "delete_customer",
    "export_customer_data",
    "join",
    "normalize_email",
    "normalize_phone",
    "set_consent",
    "unsubscribe_all",
    "update_preferences",
]
