"""Reward-ready reminders: nearly at the reward and not seen lately; a voucher about to expire.

Both are reminders about the customer's own card, so they honour the
"reminders" opt-in, not marketing consent.
"""

from __future__ import annotations

from datetime import timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ...extensions import db
from ...models import VOUCHER_ACTIVE, Card, Customer, Program, Voucher
from .base import Candidate, Day, Flow, Setting


class RewardReady(Flow):
    """K stamps or fewer from the reward, and the last visit D days ago.

    Occurrence ready-<date of the last visit>: a visit resets it.
    """

    kind = "reward_ready"
    label = _l("Reward almost ready")
    summary = _l("A reminder when a customer is close to the reward but has not been in.")
    reminder = True
    settings = (
        Setting("stamps_away", _l("Stamps from the reward (at most)"), 1, 1, 50),
        Setting("idle_days", _l("Days since the last visit"), 7, 1, 365),
    )

    def default_content(self) -> dict:
        return {
            "subject": _("Only %(left)s stamp to go, %(name)s", left="{stamps_left}",
                         name="{first_name|friend}"),
            "preheader": _("Your reward is almost yours."),
            "body_markdown": _(
                "You are %(left)s stamp away from %(reward)s. Come by and "
                "[your card](%(card)s) fills up.",
                left="{stamps_left}", reward="{reward}", card="{card_url}",
            ),
            "wallet_text": _("Only %(left)s stamp to go until your reward!",
                             left="{stamps_left}"),
        }

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        idle = int(settings["idle_days"])
        start, end = day.days_ago(idle)
        missing = Program.stamps_required - Card.stamps
        ids = db.session.scalars(
            select(Customer.id)
            .join(Card, Card.customer_id == Customer.id)
            .join(Program, Program.id == Card.program_id)
            .where(Customer.last_visit_at >= start, Customer.last_visit_at < end,
                   missing >= 1, missing <= int(settings["stamps_away"]))
            .order_by(Customer.id)
            .distinct()
        ).all()
        key = f"ready-{(day.date - timedelta(days=idle)).isoformat()}"
        return [Candidate(cid, key) for cid in ids]


class VoucherExpiry(Flow):
    """D days before an active voucher expires. Occurrence expiry-<voucher id>."""

    kind = "voucher_expiry"
    label = _l("Voucher about to expire")
    summary = _l("A reminder a few days before an unused voucher expires.")
    reminder = True
    settings = (Setting("days_before", _l("Days before the voucher expires"), 3, 1, 60),)

    def default_content(self) -> dict:
        return {
            "subject": _("Your voucher expires soon, %(name)s", name="{first_name|friend}"),
            "preheader": _("Use it before it is gone."),
            "body_markdown": _(
                "A voucher on [your card](%(card)s) expires in a few days. "
                "Show your card at the counter to use it.",
                card="{card_url}",
            ),
            "wallet_text": _("Your voucher expires soon: use it this week."),
        }

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        target = day.date + timedelta(days=int(settings["days_before"]))
        # Expiring during local day `target` (an expiry at its midnight counts for the day before).
        start, end = day.start(target), day.start(target + timedelta(days=1))
        rows = db.session.execute(
            select(Voucher.customer_id, Voucher.id)
            .where(Voucher.status == VOUCHER_ACTIVE, Voucher.expires_at > start,
                   Voucher.expires_at <= end, Voucher.expires_at > day.now)
            .order_by(Voucher.customer_id, Voucher.id)
        ).all()
        return [Candidate(cid, f"expiry-{vid}", detail=str(vid)) for cid, vid in rows]
