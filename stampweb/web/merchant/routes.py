"""The merchant admin: the dashboard and the development mailbox."""

from __future__ import annotations

from email import message_from_bytes, policy

from flask import render_template
from flask_login import current_user
from markupsafe import Markup
from sqlalchemy import select

from ...campaigns import charts, results
from ...extensions import db
from ...i18n import text_direction
from ...models import MailboxMessage
from ...tenancy import get_or_404
from .. import manager_required
from . import bp


@bp.get("/")
@manager_required
def dashboard():
    """Members, how recently they visited, visits per week, and what campaigns brought back."""
    summary = results.dashboard(current_user.merchant_id)
    return render_template(
        "merchant/dashboard.html",
        summary=summary,
        active_days=results.ACTIVE_DAYS,
        at_risk_days=results.AT_RISK_DAYS,
        visits_chart=charts.weekly_visits_chart(summary.weeks),
    )


# Campaign pages include templates/merchant/_results_campaign.html with only
# `results` and `campaign` in their context; these draw its charts.
@bp.app_template_global()
def campaign_outcome_chart(campaign_results: results.CampaignResults) -> Markup:
    return charts.outcome_chart(campaign_results, rtl=text_direction() == "rtl")


@bp.app_template_global()
def skip_reason_label(reason: str | None) -> str:
    return results.skip_reason_label(reason)


@bp.app_template_global()
def campaign_response_chart(campaign_results: results.CampaignResults) -> Markup:
    return charts.response_chart(campaign_results, rtl=text_direction() == "rtl")


@bp.get("/mailbox")
@manager_required
def mailbox():
    """Emails kept by the development mailbox when no MAIL_SERVER is configured."""
    messages = db.session.scalars(
        select(MailboxMessage).order_by(MailboxMessage.id.desc()).limit(100)
    ).all()
    return render_template("merchant/mailbox.html", messages=messages)


@bp.get("/mailbox/<int:message_id>")
@manager_required
def mailbox_message(message_id: int):
    message = get_or_404(MailboxMessage, message_id)
    parsed = message_from_bytes(message.raw, policy=policy.default)
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    return render_template(
        "merchant/mailbox_message.html",
        message=message,
        headers=list(parsed.items()),
        text=text_part.get_content() if text_part else "",
        has_html=html_part is not None,
    )
