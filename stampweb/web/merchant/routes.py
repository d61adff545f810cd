"""The merchant admin: dashboard and the development mailbox."""

from __future__ import annotations

from email import message_from_bytes, policy

from flask import render_template
from sqlalchemy import func, select

from ...extensions import db
from ...models import Customer, MailboxMessage
from ...tenancy import get_or_404
from .. import manager_required
from . import bp


@bp.get("/")
@manager_required
def dashboard():
    members = db.session.scalar(select(func.count(Customer.id)))
    return render_template("merchant/dashboard.html", members=members)


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
