"""Stamping a card, undoing a stamp, and finding a card from the staff page.

The visit table is an append-only ledger: a stamp adds a row, an undo adds a
compensating row (negative stamps, `reverses_id`), nothing is deleted. Each
change runs in one write transaction that locks the card row first
(`begin_write()` + `SELECT … FOR UPDATE`), so the cooldown and the daily cap
are checked against what is committed, not what the request saw earlier: two
taps on one card at the same moment give one stamp and one refusal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import current_app
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy import Integer, Row, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from .. import events
from ..database import begin_write, one_writer
from ..extensions import db
from ..models import (
    VISIT_REVERSAL,
    VISIT_STAMP,
    VOUCHER_ACTIVE,
    VOUCHER_EXPIRED,
    VOUCHER_REDEEMED,
    VOUCHER_VOID,
    Card,
    Customer,
    Location,
    Merchant,
    Program,
    Visit,
    Voucher,
    utcnow,
)
from ..tenancy import tenant
from . import audit
from . import vouchers as voucher_service

MAX_STAMPS_PER_VISIT = 20
MAX_AMOUNT = Decimal("99999999.99")  # Visit.amount is NUMERIC(10, 2)
UNDO_WINDOW = timedelta(minutes=10)
REQUEST_KEY_RE = re.compile(r"^[A-Za-z0-9_\-:.]{8,80}$")

_card_table = Card.__table__
_customer_table = Customer.__table__
_program_table = Program.__table__


class StampRefused(Exception):
    """The rules refuse this stamp or undo; `message` is written for the staff member.

    reason_code is one of: not_found, cooldown, daily_cap, bad_count,
    bad_amount, bad_request_key, not_latest, already_undone, too_late,
    reward_redeemed.
    """

    def __init__(self, reason_code: str, message: str, *, retry_after: timedelta | None = None):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class StampResult:
    visit_id: int
    card_id: int
    stamps: int  # the card's balance toward the next reward, after this stamp
    stamps_required: int
    voucher_ids: tuple[int, ...] = field(default_factory=tuple)  # rewards this stamp issued
    replayed: bool = False  # the same request key was seen before: nothing new was written


@dataclass(frozen=True)
class UndoResult:
    reversal_id: int
    visit_id: int
    card_id: int
    stamps: int
    stamps_required: int
    voided_voucher_ids: tuple[int, ...] = field(default_factory=tuple)


def staff_card_url(card: Card) -> str:
    """The URL a card's QR code encodes: scanning it opens the card on the staff page."""
    return f"{current_app.config['BASE_URL']}/staff/card/{card.code}"


# A comma, or the Arabic decimal separator a Persian or Arabic keyboard types
# (U+066B), both mean the decimal point; Decimal itself reads ۴ and ٤ as 4.
_DECIMAL_SIGNS = str.maketrans({",": ".", "\u066b": "."})


def parse_amount(value) -> Decimal | None:
    """A purchase amount as Decimal with two places, None when blank; StampRefused if bad."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        amount = Decimal(str(value).strip().translate(_DECIMAL_SIGNS))
    except InvalidOperation as exc:
        raise StampRefused("bad_amount", _("Enter the amount as a number, e.g. 4.50.")) from exc
    if not amount.is_finite() or amount < 0:
        raise StampRefused("bad_amount", _("The amount cannot be negative."))
    if amount > MAX_AMOUNT:
        raise StampRefused("bad_amount", _("That amount is too large."))
    return amount.quantize(Decimal("0.01"))


def record_stamps(
    merchant_id: int,
    card_id: int,
    *,
    stamps: int = 1,
    amount: Decimal | None = None,
    staff_user_id: int | None = None,
    location_id: int | None = None,
    request_key: str | None = None,
    source: str = "staff",
    device: str | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> StampResult:
    """Add `stamps` to a card, issuing a reward voucher each time the card fills.

    Checked under the card's row lock: the program's cooldown since the card's
    last stamp, and its daily cap per card (the day as the merchant's clock
    sees it). The same `request_key` again (a replayed form, a retried API
    call) returns the first answer with `replayed=True` and writes nothing; the
    balance it reports is the card's current one. Sends card_changed,
    visit_recorded and reward_issued after the commit.
    """
    if isinstance(stamps, bool) or not isinstance(stamps, int):
        raise StampRefused("bad_count", _("Enter a whole number of stamps."))
    if not 1 <= stamps <= MAX_STAMPS_PER_VISIT:
        raise StampRefused(
            "bad_count",
            _("Give between 1 and %(max)d stamps at a time.", max=MAX_STAMPS_PER_VISIT),
        )
    amount = parse_amount(amount)
    if request_key is not None and not REQUEST_KEY_RE.match(request_key):
        raise StampRefused("bad_request_key", _("This form is out of date; reload the page."))
    now = now or utcnow()

    with tenant(merchant_id), one_writer():
        begin_write()
        try:
            result = _stamp_locked(
                merchant_id, card_id, stamps=stamps, amount=amount,
                staff_user_id=staff_user_id, location_id=location_id,
                request_key=request_key, source=source, device=device, ip=ip, now=now,
            )
            if result.replayed:
                db.session.rollback()
                return result
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            # The request key is taken: this is a replay (with no cooldown to
            # catch it first), or the key was used on another card.
            replay = _replay(card_id, request_key) if request_key else None
            if replay is None:
                raise
            return replay
        except BaseException:
            db.session.rollback()
            raise

    events.send(events.card_changed, merchant_id=merchant_id, card_id=card_id)
    events.send(events.visit_recorded, merchant_id=merchant_id, visit_id=result.visit_id)
    for voucher_id in result.voucher_ids:
        events.send(events.reward_issued, merchant_id=merchant_id, voucher_id=voucher_id)
    return result


# The stamp's write runs on SQLAlchemy Core with statements built once: the
# ORM's unit of work (identity map, flush, attribute events) cost more than
# the SQL it sent, and a stamp changes a handful of known columns. The
# tenant listener sees only ORM queries, so each statement names the merchant.
_LOCK_CARD_FOR_STAMP = (
    select(
        _card_table.c.id, _card_table.c.customer_id, _card_table.c.stamps,
        _card_table.c.rewards_earned, _card_table.c.last_stamp_at,
        _program_table.c.stamps_required, _program_table.c.stamp_cooldown_minutes,
        _program_table.c.daily_stamp_cap, _program_table.c.reward_text,
        _program_table.c.voucher_validity_days,
    )
    .join(_program_table, _program_table.c.id == _card_table.c.program_id)
    .where(_card_table.c.id == bindparam("card_id"),
           _card_table.c.merchant_id == bindparam("merchant_id"))
    .with_for_update(of=_card_table)
)
_INSERT_VISIT = insert(Visit.__table__)
_UPDATE_CARD = (
    update(_card_table)
    .where(_card_table.c.id == bindparam("b_card_id"))
    .values(stamps=bindparam("b_stamps"), rewards_earned=bindparam("b_rewards"),
            last_stamp_at=bindparam("b_now"), updated_at=bindparam("b_now"))
)
# SQL arithmetic: correct even if another card of the same customer is
# stamped at the same time.
_COUNT_VISIT = (
    update(_customer_table)
    .where(_customer_table.c.id == bindparam("b_customer_id"),
           _customer_table.c.merchant_id == bindparam("b_merchant_id"))
    .values(visit_count=_customer_table.c.visit_count + 1,
            last_visit_at=bindparam("b_now"),
            total_spent=_customer_table.c.total_spent + bindparam("b_spent"),
            updated_at=bindparam("b_now"))
)


def _stamp_locked(
    merchant_id, card_id, *, stamps, amount, staff_user_id, location_id,
    request_key, source, device, ip, now,
) -> StampResult:
    connection = db.session.connection()
    card = connection.execute(
        _LOCK_CARD_FOR_STAMP, {"card_id": card_id, "merchant_id": merchant_id}
    ).first()
    if card is None:
        raise StampRefused("not_found", _("This card does not exist."))
    try:
        # The row carries the program's rules beside the card's columns.
        _check_cooldown(card, card, now)
        if card.daily_stamp_cap is not None:
            _check_daily_cap(merchant_id, card, card.daily_stamp_cap, stamps, now)
    except StampRefused:
        # A replay comes within the cooldown of its own first stamp. Looked up
        # only here and after a unique-key clash on insert, which keeps the
        # common path one query shorter; both run under the card's lock, so a
        # duplicate that waited for the lock sees the first one's committed row.
        replay = _replay(card_id, request_key) if request_key else None
        if replay is not None:
            return replay
        raise

    visit_id = connection.execute(_INSERT_VISIT, {
        "merchant_id": merchant_id,
        "customer_id": card.customer_id,
        "card_id": card.id,
        "staff_user_id": staff_user_id,
        "location_id": location_id,
        "kind": VISIT_STAMP,
        "stamps": stamps,
        "amount": amount,
        "reverses_id": None,
        "reason": None,
        "source": source[:10],
        "device": (device or None) and device[:300],
        "request_key": request_key,
        "created_at": now,
    }).inserted_primary_key[0]

    balance = card.stamps + stamps
    rewards_earned = card.rewards_earned
    issued: list[int] = []
    while balance >= card.stamps_required:
        balance -= card.stamps_required
        rewards_earned += 1
        voucher = voucher_service.issue(
            merchant_id, card.customer_id, kind="reward", title=card.reward_text,
            valid_days=card.voucher_validity_days, card_id=card.id, visit_id=visit_id,
            origin={"visit_id": visit_id}, now=now,
        )
        issued.append(voucher.id)
    connection.execute(_UPDATE_CARD, {
        "b_card_id": card.id, "b_stamps": balance, "b_rewards": rewards_earned, "b_now": now,
    })
    connection.execute(_COUNT_VISIT, {
        "b_customer_id": card.customer_id, "b_merchant_id": merchant_id, "b_now": now,
        "b_spent": amount or Decimal("0"),
    })
    audit.insert_now(
        connection, merchant_id, staff_user_id, audit.STAMP, "visit", visit_id,
        {"card_id": card.id, "customer_id": card.customer_id, "stamps": stamps,
         "amount": amount, "device": device, "source": source, "vouchers": issued},
        location_id=location_id, ip=ip, now=now,
    )
    return StampResult(
        visit_id=visit_id,
        card_id=card.id,
        stamps=balance,
        stamps_required=card.stamps_required,
        voucher_ids=tuple(issued),
    )


def _lock_card(card_id: int) -> Card:
    card = db.session.scalar(
        select(Card)
        .where(Card.id == card_id)
        .options(joinedload(Card.program, innerjoin=True))
        .with_for_update(of=Card)
        .execution_options(populate_existing=True)
    )
    if card is None:
        raise StampRefused("not_found", _("This card does not exist."))
    return card


def _replay(card_id: int, request_key: str) -> StampResult | None:
    visit = db.session.scalar(select(Visit).where(Visit.request_key == request_key))
    if visit is None:
        return None
    if visit.card_id != card_id:
        raise StampRefused("bad_request_key", _("This form is out of date; reload the page."))
    card = db.session.get(Card, card_id)
    voucher_ids = db.session.scalars(
        select(Voucher.id)
        .where(Voucher.visit_id == visit.id, Voucher.kind == "reward")
        .order_by(Voucher.id)
    ).all()
    return StampResult(
        visit_id=visit.id,
        card_id=card_id,
        stamps=card.stamps,
        stamps_required=card.program.stamps_required,
        voucher_ids=tuple(voucher_ids),
        replayed=True,
    )


def _minutes(count: int) -> str:
    return ngettext("%(num)d minute", "%(num)d minutes", count)


def _check_cooldown(card: Card, program: Program, now: datetime) -> None:
    cooldown = timedelta(minutes=program.stamp_cooldown_minutes or 0)
    if not cooldown or card.last_stamp_at is None:
        return
    since = now - card.last_stamp_at
    if since >= cooldown:
        return
    wait = cooldown - since
    ago_minutes = max(0, int(since.total_seconds() // 60))
    wait_minutes = max(1, math.ceil(wait.total_seconds() / 60))
    if ago_minutes == 0:
        message = _(
            "Already stamped less than a minute ago — next stamp possible in %(wait)s.",
            wait=_minutes(wait_minutes),
        )
    else:
        message = _(
            "Already stamped %(ago)s ago — next stamp possible in %(wait)s.",
            ago=_minutes(ago_minutes),
            wait=_minutes(wait_minutes),
        )
    raise StampRefused("cooldown", message, retry_after=wait)


def local_day_start(timezone: str, now: datetime) -> datetime:
    """Naive UTC time of the most recent midnight on the merchant's clock."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.replace(tzinfo=UTC).astimezone(zone)
    midnight = datetime.combine(local.date(), time(0), tzinfo=zone)
    return midnight.astimezone(UTC).replace(tzinfo=None)


def stamps_today(card_id: int, day_start: datetime) -> int:
    """Stamps given to a card since `day_start`, not counting undone ones."""
    reversed_ids = select(Visit.reverses_id).where(
        Visit.card_id == card_id, Visit.reverses_id.is_not(None)
    )
    total = db.session.scalar(
        select(func.coalesce(func.sum(Visit.stamps), 0)).where(
            Visit.card_id == card_id,
            Visit.kind == VISIT_STAMP,
            Visit.created_at >= day_start,
            Visit.id.not_in(reversed_ids),
        )
    )
    return int(total or 0)


def _check_daily_cap(merchant_id: int, card: Card, cap: int, stamps: int, now: datetime) -> None:
    merchant = db.session.get(Merchant, merchant_id)
    given = stamps_today(card.id, local_day_start(merchant.timezone, now))
    if given + stamps <= cap:
        return
    left = max(0, cap - given)
    if left == 0:
        message = ngettext(
            "This card already has today's %(num)d stamp; more tomorrow.",
            "This card already has today's %(num)d stamps; more tomorrow.",
            cap,
        )
    else:
        message = ngettext(
            "Only %(num)d more stamp is allowed on this card today.",
            "Only %(num)d more stamps are allowed on this card today.",
            left,
        )
    raise StampRefused("daily_cap", message)


def latest_stamp(merchant_id: int, card_id: int) -> Visit | None:
    """The card's latest stamp that has not been reversed, however old."""
    with tenant(merchant_id):
        return _latest_stamp(card_id)


def undoable_visit(merchant_id: int, card_id: int, now: datetime | None = None) -> Visit | None:
    """The card's latest stamp if it can still be undone (not undone, within 10 minutes)."""
    now = now or utcnow()
    visit = latest_stamp(merchant_id, card_id)
    if visit is None or now - visit.created_at > UNDO_WINDOW:
        return None
    return visit


def _latest_stamp(card_id: int, customer_id: int | None = None) -> Visit | None:
    """The latest stamp visit that has no reversal, of a card or of a customer."""
    if customer_id is None:
        mine, reversals = Visit.card_id == card_id, Visit.card_id == card_id
    else:
        mine, reversals = Visit.customer_id == customer_id, Visit.customer_id == customer_id
    reversed_ids = select(Visit.reverses_id).where(reversals, Visit.reverses_id.is_not(None))
    return db.session.scalar(
        select(Visit)
        .where(mine, Visit.kind == VISIT_STAMP, Visit.id.not_in(reversed_ids))
        .order_by(Visit.created_at.desc(), Visit.id.desc())
        .limit(1)
    )


def undo_stamp(
    merchant_id: int,
    visit_id: int,
    *,
    staff_user_id: int | None,
    card_id: int | None = None,
    location_id: int | None = None,
    reason: str | None = None,
    device: str | None = None,
    ip: str | None = None,
    now: datetime | None = None,
    window: timedelta | None = UNDO_WINDOW,
    action: str = audit.STAMP_UNDO,
) -> UndoResult:
    """Reverse a card's latest stamp within 10 minutes with a compensating ledger row.

    `window=None` lifts the time limit: a manager's reversal
    (`reverse_latest_stamp`), which must give a reason.

    A reward voucher the stamp issued is voided and its stamps come back to
    the card; if that reward was already redeemed the undo is refused. The
    customer's visit count, spend and last visit go back to what they were.
    `card_id`, when given, must be the visit's card (the page the tap came from).
    """
    now = now or utcnow()
    with tenant(merchant_id), one_writer():
        begin_write()
        try:
            result = _undo_locked(
                merchant_id, visit_id, staff_user_id=staff_user_id, card_id=card_id,
                location_id=location_id, reason=reason, device=device, ip=ip, now=now,
                window=window, action=action,
            )
            db.session.commit()
        except IntegrityError as exc:
            # The unique reverses_id: somebody undid it at the same moment.
            db.session.rollback()
            raise StampRefused("already_undone", _("This stamp was already undone.")) from exc
        except BaseException:
            db.session.rollback()
            raise
    events.send(events.card_changed, merchant_id=merchant_id, card_id=result.card_id)
    return result


def _undo_locked(
    merchant_id, visit_id, *, staff_user_id, card_id, location_id, reason, device, ip, now,
    window, action,
) -> UndoResult:
    visit = db.session.scalar(
        select(Visit).where(Visit.id == visit_id, Visit.kind == VISIT_STAMP)
    )
    if visit is None or visit.card_id is None or (card_id is not None and visit.card_id != card_id):
        raise StampRefused("not_found", _("This stamp does not exist."))
    card = _lock_card(visit.card_id)
    program = card.program
    if db.session.scalar(select(Visit.id).where(Visit.reverses_id == visit.id)) is not None:
        raise StampRefused("already_undone", _("This stamp was already undone."))
    latest = _latest_stamp(card.id)
    if latest is None or latest.id != visit.id:
        raise StampRefused("not_latest", _("Only the card's latest stamp can be undone."))
    if window is not None and now - visit.created_at > window:
        raise StampRefused(
            "too_late",
            _("A stamp can only be undone within %(window)s.",
              window=_minutes(int(UNDO_WINDOW.total_seconds() // 60))),
        )

    rewards = db.session.scalars(
        select(Voucher)
        .where(Voucher.visit_id == visit.id, Voucher.kind == "reward")
        .with_for_update()
    ).all()
    if any(v.status == VOUCHER_REDEEMED for v in rewards):
        raise StampRefused(
            "reward_redeemed",
            _("The reward from this stamp was already redeemed, so the stamp cannot be undone."),
        )
    voided: list[int] = []
    for voucher in rewards:
        if voucher.status in (VOUCHER_ACTIVE, VOUCHER_EXPIRED):
            voucher.status = VOUCHER_VOID
            voided.append(voucher.id)

    reversal = Visit(
        merchant_id=merchant_id,
        customer_id=visit.customer_id,
        card_id=card.id,
        staff_user_id=staff_user_id,
        location_id=location_id,
        kind=VISIT_REVERSAL,
        stamps=-visit.stamps,
        amount=-visit.amount if visit.amount is not None else None,
        reverses_id=visit.id,
        reason=(reason or None) and reason[:200],
        source=visit.source,
        device=(device or None) and device[:300],
        created_at=now,
    )
    db.session.add(reversal)
    db.session.flush()

    card.stamps = max(0, card.stamps + program.stamps_required * len(voided) - visit.stamps)
    card.rewards_earned = max(0, card.rewards_earned - len(voided))
    previous = _latest_stamp(card.id)
    card.last_stamp_at = previous.created_at if previous is not None else None
    card.updated_at = now

    if visit.customer_id is not None:
        customer = db.session.get(Customer, visit.customer_id)
        customer.visit_count = max(0, customer.visit_count - 1)
        customer.total_spent = max(
            Decimal("0"), (customer.total_spent or Decimal("0")) - (visit.amount or 0)
        )
        previous_any = _latest_stamp(card.id, customer_id=visit.customer_id)
        customer.last_visit_at = previous_any.created_at if previous_any is not None else None
        customer.updated_at = now

    audit.record(
        merchant_id, staff_user_id, action, "visit", visit.id,
        {"card_id": card.id, "customer_id": visit.customer_id, "reversal_id": reversal.id,
         "stamps": visit.stamps, "amount": visit.amount, "reason": reason, "device": device,
         "voided_vouchers": voided},
        location_id=location_id, ip=ip, now=now,
    )
    return UndoResult(
        reversal_id=reversal.id,
        visit_id=visit.id,
        card_id=card.id,
        stamps=card.stamps,
        stamps_required=program.stamps_required,
        voided_voucher_ids=tuple(voided),
    )


def reverse_latest_stamp(
    merchant_id: int,
    visit_id: int,
    *,
    manager_user_id: int,
    reason: str,
    card_id: int | None = None,
    device: str | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> UndoResult:
    """A manager reverses the card's latest stamp at any age, and must say why.

    Staff can undo their own tap for 10 minutes (`undo_stamp`); after that a
    reversal is a manager's decision with a reason, kept in the audit log
    (RELIABILITY #23). The ledger effect is the same compensating row.
    """
    if not (reason or "").strip():
        raise StampRefused("reason_required", _("Say why the stamp is reversed."))
    return undo_stamp(
        merchant_id, visit_id, staff_user_id=manager_user_id, card_id=card_id,
        reason=reason.strip(), device=device, ip=ip, now=now, window=None,
        action=audit.STAMP_REVERSE,
    )


# --- finding a card from the staff page -----------------------------------------

MIN_QUERY_LENGTH = 2
_LIKE_ESCAPE = "\\"


def _like_prefix(text: str) -> str:
    escaped = (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", "\\%").replace("_", "\\_")
    )
    return escaped + "%"


def find_cards(merchant_id: int, query: str, limit: int = 10) -> list[Card]:
    """Cards whose customer matches a phone number, email, name prefix or card code.

    Phone: the digits typed appear in the number (staff often type the last
    few). Email and name: prefix, case-insensitive (the first or last name).
    Card code: prefix, ignoring case, spaces and dashes.
    """
    text = (query or "").strip()
    if len(text) < MIN_QUERY_LENGTH:
        return []
    lowered = text.lower()
    conditions = [
        Customer.search_name.like(_like_prefix(lowered), escape=_LIKE_ESCAPE),
        Customer.search_name.like("% " + _like_prefix(lowered), escape=_LIKE_ESCAPE),
    ]
    if "@" in text or "." in text:
        conditions.append(Customer.email.like(_like_prefix(lowered), escape=_LIKE_ESCAPE))
    digits = re.sub(r"\D", "", text)
    if len(digits) >= 3 and re.fullmatch(r"[\d\s+()\-./]+", text):
        conditions.append(
            Customer.phone.like("%" + _like_prefix(digits), escape=_LIKE_ESCAPE)
        )
    code = re.sub(r"[\s\-]", "", text).upper()
    if code.isalnum() and len(code) >= 3:
        conditions.append(Card.code.like(_like_prefix(code), escape=_LIKE_ESCAPE))

    with tenant(merchant_id):
        rows = db.session.scalars(
            select(Card)
            .join(Customer, Customer.id == Card.customer_id)
            .where(or_(*conditions))
            .order_by(Customer.search_name, Card.id)
            .limit(limit)
        ).all()
    return list(rows)


def normalize_code(code: str | None) -> str:
    """A card code as stored: spaces and dashes dropped, upper case."""
    return re.sub(r"[\s\-]", "", code or "").upper()


def card_by_code(merchant_id: int, code: str) -> Card | None:
    """The merchant's card with this code (as printed or typed), or None."""
    normalized = normalize_code(code)
    if not normalized:
        return None
    with tenant(merchant_id):
        return db.session.scalar(
            select(Card)
            .where(Card.code == normalized)
            .options(
                joinedload(Card.customer, innerjoin=True), joinedload(Card.program, innerjoin=True)
            )
            .execution_options(populate_existing=True)
        )


# The staff page opens a card on every tap, stamp included: one Core row of
# plain values instead of three ORM objects, with where the staff member
# stamps (a page needs both, and one query costs less than two). It names
# the merchant itself: the tenant listener sees only ORM queries.
_staff_location = Location.__table__.alias("staff_location")
_location_table = Location.__table__
# The chosen location if it is the merchant's and active, else the first active one.
_STAFF_LOCATION_ID = (
    select(_location_table.c.id)
    .where(_location_table.c.merchant_id == bindparam("merchant_id"),
           _location_table.c.active.is_(True))
    .order_by(case((_location_table.c.id == bindparam("location_id", type_=Integer), 0),
                   else_=1),
              _location_table.c.id)
    .limit(1)
    .scalar_subquery()
)
_STAFF_CARD_BY_CODE = (
    select(
        _card_table.c.id, _card_table.c.merchant_id, _card_table.c.customer_id,
        _card_table.c.code, _card_table.c.stamps, _card_table.c.reward_state,
        _card_table.c.reward_state_expires_at,
        _customer_table.c.first_name, _customer_table.c.last_name, _customer_table.c.email,
        _customer_table.c.phone,
        _program_table.c.stamps_required, _program_table.c.reward_text,
        _program_table.c.birthday_gift_text,
        _staff_location.c.id.label("location_id"), _staff_location.c.name.label("location_name"),
    )
    .join(_customer_table, _customer_table.c.id == _card_table.c.customer_id)
    .join(_program_table, _program_table.c.id == _card_table.c.program_id)
    .outerjoin(_staff_location, _staff_location.c.id == _STAFF_LOCATION_ID)
    .where(_card_table.c.merchant_id == bindparam("merchant_id"),
           _card_table.c.code == bindparam("code"))
)


def staff_card_by_code(merchant_id: int, code: str, location_id: int | None = None) -> Row | None:
    """What the staff page shows of the merchant's card with this code, or None.

    One row: the card's id, merchant_id, customer_id, code, stamps,
    reward_state and reward_state_expires_at; its customer's first_name,
    last_name, email and phone; its program's stamps_required, reward_text
    and birthday_gift_text; and location_id, location_name: the location
    `location_id` if it is the merchant's and active, else the merchant's
    first active location, else None.
    """
    normalized = normalize_code(code)
    if not normalized:
        return None
    return db.session.connection().execute(
        _STAFF_CARD_BY_CODE,
        {"merchant_id": merchant_id, "code": normalized, "location_id": location_id},
    ).first()
