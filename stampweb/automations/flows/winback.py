"""Win-back: the last visit was N days ago (and a second step with its own offer).

Occurrence winback-<local date of the last visit>: once per lapse, and a new
visit moves the date, so the next lapse fires again. Members who joined but
never came get their own number of days (0 switches that off).
"""

from __future__ import annotations

from datetime import timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ...extensions import db
from ...models import Customer
from .base import Candidate, Day, Flow, Grant, Setting, optional_voucher, voucher_settings


class Winback(Flow):
    kind = "winback"
    prefix = "winback"
    label = _l("Win-back")
    summary = _l("A nudge when a regular has not been in for a while.")
    settings = (
        Setting("days", _l("Days since the last visit"), 30, 1, 365),
        Setting("never_visited_days", _l("Joined but never visited: days after joining "
                                         "(0: don't send)"), 14, 0, 365),
        *voucher_settings(14),
    )

    def default_content(self) -> dict:
        return {
            "subject": _("We miss you, %(name)s", name="{first_name|friend}"),
            "preheader": _("Your card is waiting for you."),
            "body_markdown": _(
                "It has been a while, %(name)s! You have %(stamps)s stamps on "
                "[your card](%(card)s) — only %(left)s more until %(reward)s.\n\n"
                "Come and see us soon.",
                name="{first_name|friend}", stamps="{stamps}", card="{card_url}",
                left="{stamps_left}", reward="{reward}",
            ),
            "wallet_text": _("We miss you! Come by for your next stamp."),
        }

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        days = int(settings["days"])
        start, end = day.days_ago(days)
        lapsed = db.session.scalars(
            select(Customer.id)
            .where(Customer.visit_count > 0, Customer.last_visit_at >= start,
                   Customer.last_visit_at < end)
            .order_by(Customer.id)
        ).all()
        key = f"{self.prefix}-{(day.date - timedelta(days=days)).isoformat()}"
        candidates = [Candidate(cid, key) for cid in lapsed]
        never = int(settings.get("never_visited_days") or 0)
        if never:
            start, end = day.days_ago(never)
            joined = (day.date - timedelta(days=never)).isoformat()
            candidates += [
                Candidate(cid, f"{self.prefix}-new-{joined}")
                for cid in db.session.scalars(
                    select(Customer.id)
                    .where(Customer.visit_count == 0, Customer.joined_at >= start,
                           Customer.joined_at < end)
                    .order_by(Customer.id)
                )
            ]
        return candidates

    def grant(self, day: Day, settings: dict, program) -> Grant | None:
        title = optional_voucher(settings)
        if title is None:
            return None
        return Grant(voucher_kind="winback", voucher_title=title,
                     expires_at=day.start(day.date + timedelta(
                         days=int(settings["voucher_valid_days"]))))

    def voucher_title(self, settings: dict, program) -> str | None:
        return optional_voucher(settings)


class WinbackSecondStep(Winback):
    kind = "winback2"
    prefix = "winback2"
    label = _l("Win-back, second step")
    summary = _l("A stronger offer for those the first nudge did not bring back.")
    settings = (
        Setting("days", _l("Days since the last visit"), 45, 1, 365),
        Setting("never_visited_days", _l("Joined but never visited: days after joining "
                                         "(0: don't send)"), 0, 0, 365),
        *voucher_settings(14),
    )

    def default_content(self) -> dict:
        return {
            "subject": _("A treat to welcome you back, %(name)s", name="{first_name|friend}"),
            "preheader": _("Your next visit comes with a little extra."),
            "body_markdown": _(
                "We would love to see you again, %(name)s. Your next visit comes with "
                "a little extra: show [your card](%(card)s) at the counter.",
                name="{first_name|friend}", card="{card_url}",
            ),
            "wallet_text": _("Come back this week: a treat is waiting."),
        }
