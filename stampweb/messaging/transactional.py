"""Emails a customer is waiting for: the double opt-in link and their card link.

Rendered in the customer's language, sent over the shared transport. The
enqueue helpers put the job on the TRANSACTIONAL queue (most urgent); the jobs
in stampweb/tasks/transactional.py call the deliver_* functions here.
"""

from __future__ import annotations

import logging

from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _

from ..extensions import db, redis_client
from ..links import card_url, confirm_url, prefs_url
from ..models import CONSENT_PENDING, Card, Customer, Merchant, utcnow
from ..tasks.queues import TRANSACTIONAL, enqueue
from ..tenancy import tenant, unscoped
from .transport import PermanentFailure, build_message, open_connection

log = logging.getLogger(__name__)


def enqueue_confirmation_email(customer_id: int):
    from ..tasks.transactional import send_confirmation_email

    return enqueue(TRANSACTIONAL, send_confirmation_email, customer_id)


def enqueue_card_link_email(customer_id: int):
    from ..tasks.transactional import send_card_link_email

    return enqueue(TRANSACTIONAL, send_card_link_email, customer_id)


# Asked-for emails (a new card link, a new confirmation link) go out at most
# this often per customer, so a public form cannot flood somebody's inbox.
REQUEST_THROTTLE_SECONDS = 15 * 60


def _first_request_in_window(kind: str, customer_id: int) -> bool:
    key = f"stampweb:requested-email:{kind}:{customer_id}"
    return bool(redis_client().set(key, "1", nx=True, ex=REQUEST_THROTTLE_SECONDS))


def request_card_link_email(customer_id: int) -> bool:
    """Enqueue the card-link email unless one was asked for recently; True if enqueued."""
    if not _first_request_in_window("card-link", customer_id):
        return False
    enqueue_card_link_email(customer_id)
    return True


def request_confirmation_email(customer_id: int) -> bool:
    """Enqueue a fresh confirmation link unless one was asked for recently."""
    if not _first_request_in_window("confirm", customer_id):
        return False
    enqueue_confirmation_email(customer_id)
    return True


def _load(customer_id: int) -> Customer | None:
    with unscoped():
        return db.session.get(Customer, customer_id)


def _render(template: str, locale: str, **context) -> tuple[str, str]:
    with force_locale(locale):
        text = render_template(f"email/{template}.txt", **context)
        html = render_template(f"email/{template}.html", **context)
    return text, html


def _send(merchant: Merchant, customer: Customer, subject: str, text: str, html: str) -> str:
    msg = build_message(merchant=merchant, to=customer.email, subject=subject, text=text, html=html)
    # The read transaction ends before the network I/O (and before the mailbox
    # writes on its own connection).
    db.session.commit()
    try:
        with open_connection() as connection:
            connection.send(msg)
    except PermanentFailure:
        log.warning("address refused for good: customer %s", customer.id)
        customer.email_suppressed_at = utcnow()
        db.session.commit()
        return "refused"
    return "sent"


def deliver_confirmation_email(customer_id: int) -> str:
    """Send the double opt-in link, if the customer is still waiting for one.

    Returns what happened: 'sent', 'skipped' (deleted, confirmed, withdrawn or
    suppressed meanwhile) or 'refused' (the server refused the address).
    Temporary failures raise, so RQ retries the job.
    """
    customer = _load(customer_id)
    if customer is None:
        return "skipped"
    with tenant(customer.merchant_id):
        if (
            customer.email_consent != CONSENT_PENDING
            or not customer.email
            or customer.email_suppressed_at is not None
        ):
            return "skipped"
        merchant = db.session.get(Merchant, customer.merchant_id)
        with force_locale(customer.locale):
            subject = _("Please confirm your email for %(merchant)s", merchant=merchant.name)
        text, html = _render(
            "confirm",
            customer.locale,
            merchant=merchant,
            customer=customer,
            confirm_url=confirm_url(customer),
            prefs_url=prefs_url(customer),
        )
        return _send(merchant, customer, subject, text, html)


def deliver_card_link_email(customer_id: int) -> str:
    """Send a member the links to their card and preferences pages.

    Used when somebody joins with an address that is already a member (the
    card page is only shown to whoever controls the address) and when an
    expired preferences link asks for a new one.
    """
    customer = _load(customer_id)
    if customer is None:
        return "skipped"
    with tenant(customer.merchant_id):
        if not customer.email or customer.email_suppressed_at is not None:
            return "skipped"
        merchant = db.session.get(Merchant, customer.merchant_id)
        card = db.session.query(Card).filter_by(customer_id=customer.id).order_by(Card.id).first()
        if card is None:
            return "skipped"
        with force_locale(customer.locale):
            subject = _("Your %(merchant)s loyalty card", merchant=merchant.name)
        text, html = _render(
            "card_link",
            customer.locale,
            merchant=merchant,
            customer=customer,
            card_url=card_url(card),
            prefs_url=prefs_url(customer),
        )
        return _send(merchant, customer, subject, text, html)
