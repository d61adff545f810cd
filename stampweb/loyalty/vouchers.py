"""Vouchers: issuing them (rewards, birthday gifts, campaign offers) and redeeming them.

A voucher is redeemed at most once: `redeem()` locks the row and checks its
status inside the same transaction that changes it, so two staff phones
tapping Redeem at the same moment give one redemption and one clear refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask_babel import gettext as _
from sqlalchemy import Row, bindparam, select

from .. import events
from ..database import begin_write
from ..extensions import db
from ..models import (
    REWARD_STATE_BIRTHDAY,
    REWARD_STATE_NONE,
    VOUCHER_ACTIVE,
    VOUCHER_EXPIRED,
    VOUCHER_KINDS,
    VOUCHER_REDEEMED,
    VOUCHER_VOID,
    Card,
    Voucher,
    new_code,
    utcnow,
)
from ..tenancy import tenant
from . import audit


class VoucherRefused(Exception):
    """A voucher action that the rules do not allow; `message` is for the staff member."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


@dataclass(frozen=True)
class RedeemResult:
    voucher_id: int | None
    card_id: int | None
    title: str
    redeemed_at: datetime


def issue(
    merchant_id: int,
    customer_id: int,
    *,
    kind: str,
    title: str,
    valid_days: int | None = None,
    expires_at: datetime | None = None,
    card_id: int | None = None,
    visit_id: int | None = None,
    origin: dict | None = None,
    now: datetime | None = None,
) -> Voucher:
    """Add a voucher to the caller's transaction (flushed, not committed) and return it.

    Expiry: `expires_at` if given, else `valid_days` after issue (None or 0:
    never expires). The caller commits and then announces what it issued.
    """
    if kind not in VOUCHER_KINDS:
        raise ValueError(f"unknown voucher kind {kind!r}")
    now = now or utcnow()
    if expires_at is None and valid_days:
        expires_at = now + timedelta(days=valid_days)
    with tenant(merchant_id):
        voucher = Voucher(
            merchant_id=merchant_id,
            customer_id=customer_id,
            card_id=card_id,
            kind=kind,
            title=title[:200],
            code=_unused_code(),
            status=VOUCHER_ACTIVE,
            issued_at=now,
            expires_at=expires_at,
            visit_id=visit_id,
            origin=origin or {},
        )
        db.session.add(voucher)
        db.session.flush()
    return voucher


def _unused_code() -> str:
    # 31^8 codes make a clash unlikely, but a voucher code is typed at the
    # till, so one indexed look-up to rule it out is worth it.
    while True:
        code = new_code()
        if db.session.scalar(select(Voucher.id).filter_by(code=code)) is None:
            return code


_voucher_table = Voucher.__table__
# Read on every tap of the staff page, stamps included: a Core statement
# built once, naming the merchant itself (the tenant listener sees ORM queries).
_USABLE = (
    select(_voucher_table.c.id, _voucher_table.c.kind, _voucher_table.c.title,
           _voucher_table.c.code, _voucher_table.c.status, _voucher_table.c.expires_at)
    .where(
        _voucher_table.c.merchant_id == bindparam("merchant_id"),
        _voucher_table.c.customer_id == bindparam("customer_id"),
        _voucher_table.c.status == VOUCHER_ACTIVE,
        _voucher_table.c.expires_at.is_(None) | (_voucher_table.c.expires_at > bindparam("now")),
    )
    .order_by(_voucher_table.c.expires_at.is_(None), _voucher_table.c.expires_at,
              _voucher_table.c.id)
)


def usable_for_customer(
    merchant_id: int, customer_id: int, now: datetime | None = None
) -> list[Row]:
    """The customer's active, unexpired vouchers, soonest expiry first.

    Plain read-only rows with the voucher's id, kind, title, code, status
    and expires_at.
    """
    now = now or utcnow()
    rows = db.session.connection().execute(
        _USABLE, {"merchant_id": merchant_id, "customer_id": customer_id, "now": now}
    )
    return list(rows)


def redeem(
    merchant_id: int,
    voucher_id: int,
    *,
    staff_user_id: int | None,
    location_id: int | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> RedeemResult:
    """Mark an active, unexpired voucher redeemed by this staff member at this location.

    Redeeming a birthday voucher also clears the card's "birthday gift due"
    state. Raises VoucherRefused when the voucher is unknown, already used,
    void or expired.
    """
    now = now or utcnow()
    with tenant(merchant_id):
        begin_write()
        try:
            voucher = db.session.scalar(
                select(Voucher)
                .where(Voucher.id == voucher_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            _check_redeemable(voucher, now)
            voucher.status = VOUCHER_REDEEMED
            voucher.redeemed_at = now
            voucher.redeemed_by_user_id = staff_user_id
            voucher.redeemed_location_id = location_id
            card_id = voucher.card_id
            if voucher.kind == "birthday":
                card_id = _clear_birthday_state(voucher, now)
            audit.record(
                merchant_id, staff_user_id, audit.VOUCHER_REDEEM, "voucher", voucher.id,
                {"code": voucher.code, "kind": voucher.kind, "title": voucher.title,
                 "customer_id": voucher.customer_id},
                location_id=location_id, ip=ip, now=now,
            )
            result = RedeemResult(voucher.id, card_id, voucher.title, now)
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    events.send(events.voucher_redeemed, merchant_id=merchant_id, voucher_id=voucher_id)
    if result.card_id is not None:
        events.send(events.card_changed, merchant_id=merchant_id, card_id=result.card_id)
    return result


def give_birthday_gift(
    merchant_id: int,
    card_id: int,
    *,
    staff_user_id: int | None,
    location_id: int | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> RedeemResult:
    """Hand over a birthday gift that is due on the card itself (no voucher was issued).

    When the gift exists as an active birthday voucher, that voucher is redeemed
    instead, so the gift can be given once only whichever button was tapped.
    """
    now = now or utcnow()
    with tenant(merchant_id):
        begin_write()
        try:
            card = db.session.scalar(
                select(Card)
                .where(Card.id == card_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            if card is None:
                raise VoucherRefused("not_found", _("This card does not exist."))
            voucher_id = db.session.scalar(
                select(Voucher.id).where(
                    Voucher.customer_id == card.customer_id,
                    Voucher.kind == "birthday",
                    Voucher.status == VOUCHER_ACTIVE,
                    (Voucher.expires_at.is_(None)) | (Voucher.expires_at > now),
                ).limit(1)
            )
            if voucher_id is None:
                if card.reward_state != REWARD_STATE_BIRTHDAY or (
                    card.reward_state_expires_at is not None
                    and card.reward_state_expires_at <= now
                ):
                    raise VoucherRefused(
                        "no_gift", _("No birthday gift is due on this card.")
                    )
                card.reward_state = REWARD_STATE_NONE
                card.reward_state_expires_at = None
                card.updated_at = now
                title = card.program.birthday_gift_text
                audit.record(
                    merchant_id, staff_user_id, audit.BIRTHDAY_GIFT_GIVEN, "card", card.id,
                    {"customer_id": card.customer_id, "title": title},
                    location_id=location_id, ip=ip, now=now,
                )
                db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    if voucher_id is not None:
        return redeem(
            merchant_id, voucher_id, staff_user_id=staff_user_id,
            location_id=location_id, ip=ip, now=now,
        )
    events.send(events.card_changed, merchant_id=merchant_id, card_id=card_id)
    return RedeemResult(None, card_id, title, now)


def _check_redeemable(voucher: Voucher | None, now: datetime) -> None:
    if voucher is None:
        raise VoucherRefused("not_found", _("This voucher does not exist."))
    if voucher.status == VOUCHER_REDEEMED:
        raise VoucherRefused(
            "already_redeemed", _("This voucher was already redeemed.")
        )
    if voucher.status == VOUCHER_VOID:
        raise VoucherRefused("void", _("This voucher was cancelled."))
    if voucher.status == VOUCHER_EXPIRED or (
        voucher.expires_at is not None and voucher.expires_at <= now
    ):
        raise VoucherRefused("expired", _("This voucher has expired."))


def _clear_birthday_state(voucher: Voucher, now: datetime) -> int | None:
    """Clear "birthday gift due" on the customer's card(s); return the card that changed."""
    cards = db.session.scalars(
        select(Card).where(
            Card.customer_id == voucher.customer_id,
            Card.reward_state == REWARD_STATE_BIRTHDAY,
        )
    ).all()
    for card in cards:
        card.reward_state = REWARD_STATE_NONE
        card.reward_state_expires_at = None
        card.updated_at = now
    if voucher.card_id is not None:
        return voucher.card_id
    return cards[0].id if cards else None
