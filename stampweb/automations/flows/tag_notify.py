"""Tag-based notification: customers carrying a tag hear what is missing to unlock rewards.

The example tag rule "spent but profile incomplete" (visits with an amount,
but no birthday or no confirmed email) pairs with a message that shows the
customer's status and the missing steps, with the preferences link that
completes the profile (templates/email/reminder_campaign.html).

Occurrence tag<id>-<date tagged>: once each time the customer gets the tag,
and again every N days while they keep it when the merchant asks for repeats.
It honours the "reminders" opt-in.
"""

from __future__ import annotations

from datetime import timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ...extensions import db
from ...models import CustomerTag
from .base import Candidate, Day, Flow, Setting


class TagNotify(Flow):
    kind = "tag_notify"
    label = _l("Tag-based notification")
    summary = _l("Tell customers with a tag what is missing to unlock their rewards.")
    reminder = True
    settings = (
        Setting("tag_id", _l("Customers with the tag"), None, kind="tag"),
        Setting("delay_days", _l("Days after getting the tag"), 0, 0, 60),
        Setting("repeat_days", _l("Repeat every (days, 0: once)"), 0, 0, 365),
    )

    def default_content(self) -> dict:
        return {
            "subject": _("%(name)s, unlock all your rewards", name="{first_name|friend}"),
            "preheader": _("A couple of details and you are all set."),
            "body_markdown": _(
                "Hi %(name)s, you have %(stamps)s stamps on [your card](%(card)s). "
                "A few details are still missing to unlock all your rewards; "
                "complete your profile from \"Your preferences\" below.",
                name="{first_name|friend}", stamps="{stamps}", card="{card_url}",
            ),
            "wallet_text": _("Add your birthday to your card and get a treat on your day."),
        }

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        tag_id = settings.get("tag_id")
        if not tag_id:
            return []
        delay = int(settings.get("delay_days") or 0)
        repeat = int(settings.get("repeat_days") or 0)
        cutoff = day.start(day.date - timedelta(days=delay) + timedelta(days=1))
        rows = db.session.execute(
            select(CustomerTag.customer_id, CustomerTag.created_at)
            .where(CustomerTag.tag_id == int(tag_id), CustomerTag.created_at < cutoff)
            .order_by(CustomerTag.customer_id)
        ).all()
        candidates = []
        for customer_id, tagged_at in rows:
            tagged = day.local_date_of(tagged_at)
            key = f"tag{tag_id}-{tagged.isoformat()}"
            if repeat:
                key += f"-{max((day.date - tagged).days - delay, 0) // repeat}"
            candidates.append(Candidate(customer_id, key))
        return candidates
