"""Birthday: N days before the birthday, a voucher or the card's "birthday gift" state.

The window is [today, today + N] rather than exactly today + N, so a day
missed by downtime, or a birthday added to the profile inside the window, is
still honoured; the occurrence key birthday-<year of the birthday> keeps it to
once per customer per year, whatever the customer edits. Customers born on
29 February celebrate on 28 February in other years.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import and_, or_, select

from ...campaigns.segments import birthday_ranges
from ...extensions import db
from ...models import Customer
from .base import Candidate, Day, Flow, Grant, Setting

MODE_VOUCHER = "voucher"
MODE_CARD_STATE = "card_state"


def next_birthday(month: int, day: int, today: date) -> date:
    """The first celebration on or after `today`; 29 February falls on the 28th in common years."""
    for year in (today.year, today.year + 1):
        if month == 2 and day == 29 and not calendar.isleap(year):
            celebration = date(year, 2, 28)
        else:
            celebration = date(year, month, day)
        if celebration >= today:
            return celebration
    raise AssertionError("unreachable: a birthday comes within a year")


class Birthday(Flow):
    kind = "birthday"
    label = _l("Birthday")
    summary = _l("A gift a few days before each customer's birthday, once a year.")
    settings = (
        Setting("days_before", _l("Days before the birthday"), 3, 0, 60),
        Setting("mode", _l("The gift"), MODE_VOUCHER, kind="choice", choices=(
            (MODE_VOUCHER, _l("Issue a birthday voucher")),
            (MODE_CARD_STATE, _l("Mark the card \"birthday gift available\"")),
        )),
        Setting("window_days", _l("The gift is valid for (days)"), 14, 1, 90),
    )

    def default_content(self) -> dict:
        return {
            "subject": _("Happy birthday, %(name)s!", name="{first_name|friend}"),
            "preheader": _("A birthday treat is waiting for you."),
            "body_markdown": _(
                "Happy birthday, %(name)s!\n\n"
                "A birthday treat is waiting for you. Show [your card](%(card)s) at the "
                "counter in the next two weeks and it is yours.",
                name="{first_name|friend}", card="{card_url}",
            ),
            "wallet_text": _("Happy birthday! A treat is waiting for you."),
        }

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        lead = int(settings["days_before"])
        clauses = [
            and_(Customer.birthday_month == month, Customer.birthday_day.between(first, last))
            for month, first, last in birthday_ranges(day.date, lead)
        ]
        rows = db.session.execute(
            select(Customer.id, Customer.birthday_month, Customer.birthday_day)
            .where(Customer.birthday_day.is_not(None), or_(*clauses))
            .order_by(Customer.id)
        ).all()
        candidates = []
        for customer_id, month, dom in rows:
            try:
                celebration = next_birthday(month, dom, day.date)
            except ValueError:
                continue  # an impossible date that slipped in through an import
            if celebration - day.date <= timedelta(days=lead):
                candidates.append(Candidate(customer_id, f"birthday-{celebration.year}",
                                            detail=celebration.isoformat()))
        return candidates

    def grant(self, day: Day, settings: dict, program) -> Grant:
        until = day.start(day.date + timedelta(days=int(settings["window_days"])))
        if settings.get("mode") == MODE_CARD_STATE:
            return Grant(birthday_state_until=until)
        return Grant(voucher_kind="birthday", voucher_title=program.birthday_gift_text,
                     expires_at=until)

    def voucher_title(self, settings: dict, program) -> str | None:
        if settings.get("mode") == MODE_CARD_STATE:
            return None
        return program.birthday_gift_text
