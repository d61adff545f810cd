"""The message log: every message the outbox holds, filterable, with its status history."""

from __future__ import annotations

from datetime import date

from flask import abort, render_template, request
from flask_babel import gettext as _
from flask_login import current_user

from ...campaigns import message_log
from ...campaigns.results import SKIP_REASON_LABELS, STATUS_LABELS
from .. import manager_required
from . import bp


def _date_arg(args, name: str, errors: dict[str, str]) -> date | None:
    value = (args.get(name) or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[name] = _("Enter a date as YYYY-MM-DD.")
        return None


def _filters_from_args(args) -> tuple[message_log.LogFilters, dict[str, str]]:
    """The filters in the query string; unknown values are ignored, bad dates reported."""
    errors: dict[str, str] = {}
    channel = args.get("channel")
    status = args.get("status")
    reason = args.get("skip_reason")
    filters = message_log.LogFilters(
        campaign_id=args.get("campaign", type=int),
        channel=channel if channel in message_log.CHANNELS else None,
        status=status if status in message_log.STATUS_CHOICES else None,
        skip_reason=reason if reason in message_log.SKIP_REASON_CHOICES else None,
        q=(args.get("q") or "").strip()[:100],
        date_from=_date_arg(args, "from", errors),
        date_to=_date_arg(args, "to", errors),
    )
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        errors["to"] = _("The end date is before the start date.")
    return filters, errors


@bp.get("/messages")
@manager_required
def messages():
    filters, errors = _filters_from_args(request.args)
    before = request.args.get("before", type=int)
    merchant_id = current_user.merchant_id
    page = message_log.search_messages(merchant_id, filters, before=before)
    next_args = {k: v for k, v in request.args.items() if k != "before" and v}
    context = dict(
        page=page, filters=filters, errors=errors, args=request.args, before=before,
        next_args=next_args,
        campaign_choices=message_log.campaign_choices(merchant_id),
        channel_choices=message_log.CHANNELS,
        status_labels=STATUS_LABELS,
        status_choices=message_log.STATUS_CHOICES,
        reason_labels=SKIP_REASON_LABELS,
        reason_choices=message_log.SKIP_REASON_CHOICES,
    )
    if request.headers.get("HX-Request"):
        return render_template("merchant/messages_rows.html", **context)
    return render_template("merchant/messages.html", **context)


@bp.get("/messages/<int:outbox_id>")
@manager_required
def message(outbox_id: int):
    """One message: its status history with times in the merchant's time zone."""
    detail = message_log.message_detail(current_user.merchant_id, outbox_id)
    if detail is None:
        abort(404)
    template = (
        "merchant/messages_history.html" if request.headers.get("HX-Request")
        else "merchant/messages_detail.html"
    )
    return render_template(template, detail=detail, status_labels=STATUS_LABELS,
                           reason_labels=SKIP_REASON_LABELS)
