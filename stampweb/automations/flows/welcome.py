"""Welcome: soon after joining; by email only once the address is confirmed.

Evaluated on every engine run (not at the daily hour): a welcome is expected
minutes after joining. It fires when the first channel is ready and issues the
optional voucher then; a channel that becomes ready later (the confirmation
click) joins the same occurrence and carries the same voucher code. Members
who joined before the flow was switched on are not welcomed.
"""

from __future__ import annotations

from datetime import timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ...extensions import db
from ...models import CONSENT_GRANTED, Customer, Merchant
from .base import Candidate, Day, Flow, Grant, Setting, optional_voucher, voucher_settings


class Welcome(Flow):
    kind = "welcome"
    label = _l("Welcome")
    summary = _l("A welcome after joining (by email once the address is confirmed).")
    continuous = True
    settings = (
        Setting("wait_days", _l("Wait this many days for the email confirmation"), 7, 1, 30),
        *voucher_settings(30),
    )

    def default_content(self) -> dict:
        return {
            "subject": _("Welcome, %(name)s!", name="{first_name|friend}"),
            "preheader": _("Your stamp card is ready."),
            "body_markdown": _(
                "Thanks for joining, %(name)s! Collect %(left)s stamps and %(reward)s "
                "is yours. [Open your card](%(card)s) any time.",
                name="{first_name|friend}", left="{stamps_left}", reward="{reward}",
                card="{card_url}",
            ),
            "wallet_text": _("Welcome! Your stamp card is ready."),
        }

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        since = day.now - timedelta(days=int(settings["wait_days"]))
        if flow.enabled_at is not None:
            since = max(since, flow.enabled_at)
        merchant = db.session.get(Merchant, day.merchant_id)
        wanted = flow.campaign.channel_list
        customers = db.session.scalars(
            select(Customer).where(Customer.joined_at >= since, Customer.joined_at <= day.now)
            .order_by(Customer.id)
        ).all()
        candidates = []
        for customer in customers:
            ready = []
            if "email" in wanted and customer.email and customer.email_consent == (
                CONSENT_GRANTED
            ) and (customer.email_confirmed_at is not None or not merchant.double_opt_in):
                ready.append("email")
            if "wallet" in wanted and customer.wallet_consent == CONSENT_GRANTED:
                ready.append("wallet")
            candidates.append(Candidate(customer.id, "welcome", tuple(ready)))
        return candidates

    def grant(self, day: Day, settings: dict, program) -> Grant | None:
        title = optional_voucher(settings)
        if title is None:
            return None
        return Grant(voucher_kind="welcome", voucher_title=title,
                     expires_at=day.start(day.date + timedelta(
                         days=int(settings["voucher_valid_days"]))))

    def voucher_title(self, settings: dict, program) -> str | None:
        return optional_voucher(settings)
