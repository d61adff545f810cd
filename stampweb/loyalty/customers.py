"""The merchant's customers: the searchable list, one customer's timeline, and editing.

The list pages by key (`id < after`, newest first), never by OFFSET: page 200
costs what page 1 costs, and a customer joining meanwhile does not shift the
pages under the reader.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from flask_babel import lazy_gettext as _l
from sqlalchemy import exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from ..campaigns import tags as tag_service
from ..database import begin_write
from ..extensions import db
from ..i18n import LANGUAGES
from ..models import (
    CHANNELS,
    CONSENT_GRANTED,
    CONSENT_PENDING,
    CONSENT_WITHDRAWN,
    VISIT_REVERSAL,
    VOUCHER_ACTIVE,
    Card,
    ConsentEvent,
    Customer,
    Location,
    Merchant,
    Tag,
    User,
    Visit,
    Voucher,
    utcnow,
)
from ..tenancy import tenant
from . import audit, membership

PAGE_SIZE = 50
CUSTOMER_UPDATE = "customer.update"
_LIKE_ESCAPE = "\\"


class CustomerError(ValueError):
    """Unacceptable customer data; `errors` maps each field at fault to its message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


# --- normalising what people type ----------------------------------------------


def search_name_for(first_name: str, last_name: str) -> str:
    return f"{first_name} {last_name}".strip().lower()[:161]


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


# --- the list ------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerFilters:
    """What the list is narrowed to. `tags`: customers carrying every one of these tag ids."""

    q: str = ""
    email_consent: bool = False
    visited_within_days: int | None = None
    active_voucher: bool = False
    birthday_this_month: bool = False
    tags: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return bool(
            self.q.strip()
            or self.email_consent
            or self.visited_within_days
            or self.active_voucher
            or self.birthday_this_month
            or self.tags
        )


@dataclass
class CustomerPage:
    customers: list[Customer]
    # Pass as `after` to get the next page; None on the last page.
    next_after: int | None
    # Customer id -> that customer's tags (by name), fetched in one query for the page.
    tags: dict[int, list[Tag]] = field(default_factory=dict)


def _query_conditions(q: str) -> list:
    """Match a name prefix (first or last name), an email prefix, phone digits or a card code."""
    text = q.strip()
    lowered = text.lower()
    conditions = [
        Customer.search_name.like(_like_prefix(lowered), escape=_LIKE_ESCAPE),
        Customer.search_name.like("% " + _like_prefix(lowered), escape=_LIKE_ESCAPE),
        Customer.email.like(_like_prefix(lowered), escape=_LIKE_ESCAPE),
    ]
    digits = re.sub(r"\D", "", text)
    if len(digits) >= 3 and re.fullmatch(r"[\d\s+()\-./]+", text):
        # Staff type the last few digits as often as the first few.
        conditions.append(Customer.phone.like("%" + _like_prefix(digits), escape=_LIKE_ESCAPE))
    code = re.sub(r"[\s\-]", "", text).upper()
    if code.isalnum():
        conditions.append(
            exists().where(Card.customer_id == Customer.id, Card.code == code)
        )
    return conditions


def merchant_today(merchant_id: int, now: datetime | None = None) -> date:
    merchant = db.session.get(Merchant, merchant_id)
    now = now or utcnow()
    return now.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(merchant.timezone)).date()


def search_customers(
    merchant_id: int,
    filters: CustomerFilters,
    *,
    after: int | None = None,
    limit: int = PAGE_SIZE,
    now: datetime | None = None,
) -> CustomerPage:
    """One page of the merchant's customers, newest first, matching `filters`."""
    now = now or utcnow()
    query = (
        select(Customer)
        .options(selectinload(Customer.cards))
        .order_by(Customer.id.desc())
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(Customer.id < after)
    if filters.q.strip():
        query = query.where(or_(*_query_conditions(filters.q)))
    if filters.email_consent:
        query = query.where(
            Customer.email_consent == CONSENT_GRANTED, Customer.email_suppressed_at.is_(None)
        )
    if filters.visited_within_days:
        query = query.where(
            Customer.last_visit_at >= now - timedelta(days=filters.visited_within_days)
        )
    if filters.active_voucher:
        query = query.where(
            exists().where(
                Voucher.customer_id == Customer.id,
                Voucher.status == VOUCHER_ACTIVE,
                or_(Voucher.expires_at.is_(None), Voucher.expires_at > now),
            )
        )
    if filters.birthday_this_month:
        query = query.where(Customer.birthday_month == merchant_today(merchant_id, now).month)
    if filters.tags:
        query = tag_service.where_has_tags(query, merchant_id, filters.tags)
    with tenant(merchant_id):
        rows = list(db.session.scalars(query))
    next_after = rows[limit - 1].id if len(rows) > limit else None
    shown = rows[:limit]
    return CustomerPage(
        customers=shown,
        next_after=next_after,
        tags=tag_service.tags_by_customer(merchant_id, [c.id for c in shown]),
    )


# --- one customer's timeline ---------------------------------------------------


@dataclass
class TimelineEntry:
    at: datetime
    kind: str  # visit, reversal, voucher_issued, voucher_redeemed, consent, message
    title: str
    detail: str = ""
    # Sorts entries with the same time in the order they happened.
    order: int = 0
    extra: dict = field(default_factory=dict)


TimelineSource = Callable[[int, int], list[TimelineEntry]]
# Other modules add their own entries (campaign messages, tags) with
# register_timeline_source(fn); fn(merchant_id, customer_id) -> entries.
_EXTRA_SOURCES: list[TimelineSource] = []


def register_timeline_source(source: TimelineSource) -> TimelineSource:
    if source not in _EXTRA_SOURCES:
        _EXTRA_SOURCES.append(source)
    return source


def _visit_entries(customer_id: int) -> list[TimelineEntry]:
    rows = db.session.execute(
        select(Visit, Location.name, User.name, User.email)
        .outerjoin(Location, Location.id == Visit.location_id)
        .outerjoin(User, User.id == Visit.staff_user_id)
        .where(Visit.customer_id == customer_id)
    ).all()
    entries = []
    for visit, location_name, user_name, user_email in rows:
        parts = [p for p in (location_name, user_name or user_email) if p]
        if visit.amount is not None:
            parts.append(str(visit.amount))
        if visit.kind == VISIT_REVERSAL:
            title = _l("Stamp undone (%(n)s)", n=abs(visit.stamps))
            if visit.reason:
                parts.append(visit.reason)
            kind = "reversal"
        else:
            title = _l("Visit: %(n)s stamp(s)", n=visit.stamps)
            kind = "visit"
        if visit.source and visit.source not in ("staff",):
            parts.append(visit.source)
        entries.append(
            TimelineEntry(visit.created_at, kind, str(title), " · ".join(parts), visit.id)
        )
    return entries


def _voucher_entries(customer_id: int) -> list[TimelineEntry]:
    entries = []
    for voucher in db.session.scalars(select(Voucher).where(Voucher.customer_id == customer_id)):
        entries.append(
            TimelineEntry(
                voucher.issued_at,
                "voucher_issued",
                str(_l("Voucher issued: %(title)s", title=voucher.title)),
                f"{voucher.kind} · {voucher.code}",
                voucher.id,
                {"status": voucher.status, "expires_at": voucher.expires_at},
            )
        )
        if voucher.redeemed_at is not None:
            entries.append(
                TimelineEntry(
                    voucher.redeemed_at,
                    "voucher_redeemed",
                    str(_l("Voucher redeemed: %(title)s", title=voucher.title)),
                    voucher.code,
                    voucher.id,
                )
            )
    return entries


def _consent_entries(customer_id: int) -> list[TimelineEntry]:
    rows = db.session.execute(
        select(ConsentEvent, User.name, User.email)
        .outerjoin(User, User.id == ConsentEvent.user_id)
        .where(ConsentEvent.customer_id == customer_id)
    ).all()
    entries = []
    for event, user_name, user_email in rows:
        parts = [str(_l("source: %(source)s", source=event.source))]
        if user_name or user_email:
            parts.append(user_name or user_email)
        if event.wording:
            parts.append(event.wording)
        entries.append(
            TimelineEntry(
                event.created_at,
                "consent",
                str(_l("%(channel)s consent: %(state)s", channel=event.channel, state=event.state)),
                " · ".join(parts),
                event.id,
            )
        )
    return entries


def timeline(merchant_id: int, customer_id: int, limit: int = 500) -> list[TimelineEntry]:
    """Everything that happened to one customer, newest first.

    Visits (and their reversals), vouchers issued and redeemed, consent
    changes, and whatever registered sources add (campaign messages).
    """
    with tenant(merchant_id):
        entries = (
            _visit_entries(customer_id)
            + _voucher_entries(customer_id)
            + _consent_entries(customer_id)
        )
        for source in _EXTRA_SOURCES:
            entries.extend(source(merchant_id, customer_id))
    entries.sort(key=lambda e: (e.at, e.order), reverse=True)
    return entries[:limit]


# --- editing -------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerChanges:
    first_name: str = ""
    last_name: str = ""
    email: str | None = None
    phone: str | None = None
    birthday_day: int | None = None
    birthday_month: int | None = None
    birthday_year: int | None = None
    locale: str = "en"
    # Channel → wanted: True ticks consent (granted by staff), False takes it back.
    consents: dict[str, bool] = field(default_factory=dict)


def _check_changes(
    merchant_id: int, customer_id: int | None, changes: CustomerChanges
) -> tuple[dict[str, str], str | None, str | None]:
    errors: dict[str, str] = {}
    if len(changes.first_name or "") > 80:
        errors["first_name"] = _l("Use at most %(n)s characters.", n=80)
    if len(changes.last_name or "") > 80:
        errors["last_name"] = _l("Use at most %(n)s characters.", n=80)
    email = phone = None
    try:
        email = membership.normalize_email(changes.email)
    except membership.MembershipError as exc:
        errors["email"] = exc.message
    try:
        phone = membership.normalize_phone(changes.phone)
    except membership.MembershipError as exc:
        errors["phone"] = exc.message
    try:
        membership.check_birthday(
            changes.birthday_day, changes.birthday_month, changes.birthday_year
        )
    except membership.MembershipError as exc:
        errors[exc.field] = exc.message
    if changes.locale not in LANGUAGES:
        errors["locale"] = _l("Choose a language from the list.")
    if changes.consents.get("email") and not email:
        errors["email_consent"] = _l("Marketing email needs an email address.")
    with tenant(merchant_id):
        others = select(Customer.id)
        if customer_id is not None:
            others = others.where(Customer.id != customer_id)
        if email and db.session.scalar(others.where(Customer.email == email)):
            errors["email"] = _l("Another customer has this email address.")
        if phone and db.session.scalar(others.where(Customer.phone == phone)):
            errors["phone"] = _l("Another customer has this phone number.")
    return errors, email, phone


@dataclass(frozen=True)
class UpdateResult:
    customer_id: int
    changed: dict
    # Channel → state after the change, for the channels whose consent was touched.
    consents: dict[str, str]


def update_customer(
    merchant_id: int,
    customer_id: int,
    changes: CustomerChanges,
    *,
    user_id: int | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
) -> UpdateResult:
    """Save a staff member's edit of a customer; CustomerError and no change if anything is bad.

    The profile is saved (with an audit entry) in one transaction; then each
    consent the staff member ticked or unticked goes through
    `membership.set_consent` with source "staff" and the user's id, which
    applies the merchant's double opt-in (ticking email may give "pending"
    and send the confirmation link).
    """
    errors, email, phone = _check_changes(merchant_id, customer_id, changes)
    if errors:
        raise CustomerError(errors)
    begin_write()
    with tenant(merchant_id):
        customer = db.session.scalars(
            select(Customer).where(Customer.id == customer_id).with_for_update()
        ).one()
        before = _snapshot(customer)
        customer.first_name = (changes.first_name or "").strip()
        customer.last_name = (changes.last_name or "").strip()
        customer.search_name = search_name_for(customer.first_name, customer.last_name)
        if email != customer.email:
            # A new address has not confirmed anything yet.
            customer.email_confirmed_at = None
        customer.email = email
        customer.phone = phone
        customer.birthday_day = changes.birthday_day
        customer.birthday_month = changes.birthday_month
        customer.birthday_year = changes.birthday_year
        customer.locale = changes.locale
        try:
            db.session.flush()
        except IntegrityError as exc:
            # Another request took the address between the check and the write.
            db.session.rollback()
            field_name = "email" if "email" in str(exc.orig).lower() else "phone"
            message = (
                _l("Another customer has this email address.")
                if field_name == "email"
                else _l("Another customer has this phone number.")
            )
            raise CustomerError({field_name: message}) from exc
        changed = {
            key: [before[key], value]
            for key, value in _snapshot(customer).items()
            if before[key] != value
        }
        wanted_states = {}
        for channel, wanted in changes.consents.items():
            if channel not in CHANNELS:
                continue
            current = getattr(customer, f"{channel}_consent")
            if wanted and current not in (CONSENT_GRANTED, CONSENT_PENDING):
                wanted_states[channel] = CONSENT_GRANTED
            elif not wanted and current in (CONSENT_GRANTED, CONSENT_PENDING):
                wanted_states[channel] = CONSENT_WITHDRAWN
        if changed:
            audit.record(
                merchant_id, user_id, CUSTOMER_UPDATE, "customer", customer_id,
                detail=changed, ip=ip,
            )
        db.session.commit()
    consents = {
        channel: membership.set_consent(
            merchant_id, customer_id, channel, state,
            source="staff", ip=ip, user_agent=user_agent, user_id=user_id,
        )
        for channel, state in wanted_states.items()
    }
    return UpdateResult(customer_id=customer_id, changed=changed, consents=consents)


def _snapshot(customer: Customer) -> dict:
    return {
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "email": customer.email,
        "phone": customer.phone,
        "birthday": [customer.birthday_day, customer.birthday_month, customer.birthday_year],
        "locale": customer.locale,
    }


# --- counters shown on the customer page ---------------------------------------


@dataclass(frozen=True)
class CustomerSummary:
    customer: Customer
    card: Card | None
    visit_count: int
    total_spent: Decimal
    last_visit_at: datetime | None
    active_vouchers: list[Voucher]


def summary(merchant_id: int, customer_id: int) -> CustomerSummary:
    with tenant(merchant_id):
        customer = db.session.scalars(select(Customer).where(Customer.id == customer_id)).one()
        now = utcnow()
        vouchers = list(
            db.session.scalars(
                select(Voucher)
                .where(
                    Voucher.customer_id == customer_id,
                    Voucher.status == VOUCHER_ACTIVE,
                    or_(Voucher.expires_at.is_(None), Voucher.expires_at > now),
                )
                .order_by(Voucher.issued_at.desc())
            )
        )
        return CustomerSummary(
            customer=customer,
            card=customer.card,
            visit_count=customer.visit_count,
            total_spent=customer.total_spent or Decimal("0"),
            last_visit_at=customer.last_visit_at,
            active_vouchers=vouchers,
        )
