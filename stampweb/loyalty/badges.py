"""Badges on a card for the staff page: what to tell or give the customer now."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask_babel import gettext as _
from flask_babel import ngettext

from ..models import REWARD_STATE_BIRTHDAY, VOUCHER_ACTIVE, Card, utcnow
from . import vouchers as voucher_service

BIRTHDAY = "birthday"
REWARD_READY = "reward"
EXPIRING = "expiring"

EXPIRING_WITHIN = timedelta(days=7)


@dataclass(frozen=True)
class Badge:
    kind: str  # BIRTHDAY, REWARD_READY or EXPIRING
    label: str
    tone: str  # a CSS class of .badge: ok, warn, bad
    count: int = 1


def for_card(
    card: Card, now: datetime | None = None, vouchers: Sequence | None = None
) -> list[Badge]:
    """Badges for a card: birthday gift due, reward ready, vouchers expiring within 7 days.

    `vouchers` are the customer's usable vouchers (rows or Voucher objects:
    kind, status and expires_at are read) when the caller has them already
    (the staff page lists them anyway); otherwise they are loaded.
    """
    now = now or utcnow()
    if vouchers is None:
        vouchers = voucher_service.usable_for_customer(card.merchant_id, card.customer_id, now)
    usable = [
        v for v in vouchers
        if v.status == VOUCHER_ACTIVE and (v.expires_at is None or v.expires_at > now)
    ]
    badges: list[Badge] = []

    birthday_state_due = card.reward_state == REWARD_STATE_BIRTHDAY and (
        card.reward_state_expires_at is None or card.reward_state_expires_at > now
    )
    if birthday_state_due or any(v.kind == "birthday" for v in usable):
        badges.append(Badge(BIRTHDAY, _("Birthday gift due"), "warn"))

    rewards = sum(1 for v in usable if v.kind == "reward")
    if rewards:
        badges.append(
            Badge(
                REWARD_READY,
                ngettext("Reward ready", "%(num)d rewards ready", rewards),
                "ok",
                rewards,
            )
        )

    soon = now + EXPIRING_WITHIN
    expiring = [v for v in usable if v.expires_at is not None and v.expires_at <= soon]
    if expiring:
        badges.append(
            Badge(
                EXPIRING,
                ngettext(
                    "A voucher expires soon", "%(num)d vouchers expire soon", len(expiring)
                ),
                "bad",
                len(expiring),
            )
        )
    return badges
