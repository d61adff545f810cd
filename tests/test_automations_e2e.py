"""Each flow end to end on real PostgreSQL, Redis, SMTP and a worker process: the manager
turns the switch on in the admin, the cron job runs in the worker, the customer receives
the message, and the voucher it carries is redeemed at the staff page."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.loyalty import stamping, vouchers
from stampweb.models import (
    CONSENT_GRANTED,
    Card,
    CustomerTag,
    Tag,
    Voucher,
    utcnow,
)
from stampweb.tasks.automations import run_automations
from stampweb.tasks.queues import DEFAULT, enqueue
from stampweb.tenancy import tenant

from .factories import csrf_token_from, gen_customer, gen_merchant, login


def day_of(moment: datetime) -> datetime:
    return datetime.combine(moment.date(), datetime.min.time())


def _birthday(merchant, now):
    soon = (now + timedelta(days=2)).date()
    gen_customer(merchant, first_name="Bea", email="bea@example.com",
                 email_consent=CONSENT_GRANTED, email_confirmed_at=now,
                 birthday_month=soon.month, birthday_day=soon.day)
    return {"setting_days_before": "3", "setting_mode": "voucher", "setting_window_days": "14"}


def _winback(merchant, now):
    gen_customer(merchant, first_name="Wyn", email="wyn@example.com",
                 email_consent=CONSENT_GRANTED, email_confirmed_at=now, visit_count=4,
                 last_visit_at=day_of(now) - timedelta(days=30) + timedelta(hours=1))
    return {"setting_days": "30", "setting_never_visited_days": "0",
            "setting_voucher_title": "A free cookie", "setting_voucher_valid_days": "14"}


def _winback2(merchant, now):
    gen_customer(merchant, first_name="Wes", email="wes@example.com",
                 email_consent=CONSENT_GRANTED, email_confirmed_at=now, visit_count=4,
                 last_visit_at=day_of(now) - timedelta(days=45) + timedelta(hours=1))
    return {"setting_days": "45", "setting_never_visited_days": "0",
            "setting_voucher_title": "Two for one", "setting_voucher_valid_days": "14"}


def _reward_ready(merchant, now):
    customer = gen_customer(merchant, first_name="Rae", email="rae@example.com",
                            reminders_consent=CONSENT_GRANTED, visit_count=9,
                            last_visit_at=day_of(now) - timedelta(days=7) + timedelta(hours=1))
    with tenant(merchant.id):
        db.session.scalar(select(Card).where(Card.customer_id == customer.id)).stamps = 9
        db.session.commit()
    return {"setting_stamps_away": "1", "setting_idle_days": "7"}


def _voucher_expiry(merchant, now):
    customer = gen_customer(merchant, first_name="Vic", email="vic@example.com",
                            reminders_consent=CONSENT_GRANTED)
    with tenant(merchant.id):
        card_id = db.session.scalar(select(Card.id).where(Card.customer_id == customer.id))
        vouchers.issue(merchant.id, customer.id, kind="reward", title="A free coffee",
                       card_id=card_id, expires_at=day_of(now) + timedelta(days=3, hours=12))
        db.session.commit()
    return {"setting_days_before": "3"}


def _welcome(merchant, now):
    return {"setting_wait_days": "7", "setting_voucher_title": "A welcome cookie",
            "setting_voucher_valid_days": "30"}


def _welcome_joins(merchant, now):
    # Joins after the switch was turned on, and confirmed the address.
    gen_customer(merchant, first_name="Wil", email="wil@example.com",
                 email_consent=CONSENT_GRANTED, email_confirmed_at=utcnow())


def _tag_notify(merchant, now):
    customer = gen_customer(merchant, first_name="Tia", email="tia@example.com",
                            reminders_consent=CONSENT_GRANTED)
    with tenant(merchant.id):
        tag = Tag(merchant_id=merchant.id, name="spent but profile incomplete")
        db.session.add(tag)
        db.session.flush()
        db.session.add(CustomerTag(merchant_id=merchant.id, customer_id=customer.id,
                                   tag_id=tag.id, created_at=now - timedelta(days=1)))
        db.session.commit()
        return {"setting_tag_id": str(tag.id), "setting_delay_days": "0",
                "setting_repeat_days": "0"}


FLOWS = {
    "birthday": (_birthday, "bea@example.com", True),
    "winback": (_winback, "wyn@example.com", True),
    "winback2": (_winback2, "wes@example.com", True),
    "reward_ready": (_reward_ready, "rae@example.com", False),
    "voucher_expiry": (_voucher_expiry, "vic@example.com", True),
    "welcome": (_welcome, "wil@example.com", True),
    "tag_notify": (_tag_notify, "tia@example.com", False),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(FLOWS))
def test_flow_end_to_end(mail_app, smtp, workers, kind):
    setup, address, carries_voucher = FLOWS[kind]
    now = utcnow()
    with mail_app.app_context():
        merchant = gen_merchant(timezone="UTC", postal_address="1 Main St")
        mid, slug = merchant.id, merchant.slug
        settings = setup(merchant, now)
    client = mail_app.test_client()
    login(client, f"owner@{slug}.test")
    page = client.get(f"/admin/automations/{kind}")
    token = csrf_token_from(page.text)
    body = "Hello {first_name}. Code: {voucher_code|none}. Card: {card_url}"
    saved = client.post(f"/admin/automations/{kind}", data={
        "csrf_token": token, **settings, "local_hour": "0", "channels": "email",
        "subject": "For {first_name}", "preheader": "", "body_markdown": body,
        "wallet_text": "",
    })
    assert saved.status_code == 302, saved.text
    switched = client.post(f"/admin/automations/{kind}/switch",
                           data={"csrf_token": token, "enabled": "1"})
    assert switched.status_code == 302
    if kind == "welcome":
        with mail_app.app_context():
            _welcome_joins(merchant, now)

    workers.start(1)
    with mail_app.app_context():
        enqueue(DEFAULT, run_automations)  # what `rq cron` does every 15 minutes
    [received] = smtp.wait_for(1, timeout=60)
    message = received.message
    assert message["To"] == address
    text = message.get_body(("plain",)).get_content()
    assert text.startswith("Hello ")
    code = re.search(r"Code: (\S+)\.", text).group(1)

    # A second run (a double cron tick, a restart) sends nothing more.
    with mail_app.app_context():
        enqueue(DEFAULT, run_automations)
    with pytest.raises(TimeoutError):
        smtp.wait_for(2, timeout=3)

    with mail_app.app_context(), tenant(mid):
        if kind == "reward_ready":
            # The reminder worked: the customer comes in, the card fills.
            card = db.session.scalar(select(Card))
            stamping.record_stamps(mid, card.id, stamps=1)
        if kind == "tag_notify":
            # No voucher here: the message links to the page that completes the profile.
            prefs = re.search(r"https?://\S+/prefs/\S+", text).group(0)
            assert client.get(urlsplit(prefs).path).status_code == 200
            return
        if carries_voucher and kind != "voucher_expiry":
            assert code != "none"
            voucher = db.session.scalar(select(Voucher).where(Voucher.code == code))
        else:
            voucher = db.session.scalar(select(Voucher).order_by(Voucher.id.desc()))
        card_code = db.session.scalar(select(Card.code).where(Card.id == voucher.card_id))
        voucher_id = voucher.id

    url = f"/staff/card/{card_code}/vouchers/{voucher_id}/redeem"
    confirm = client.get(url)
    assert confirm.status_code == 200
    done = client.post(url, data={"csrf_token": csrf_token_from(confirm.text)})
    assert done.status_code == 303
    with mail_app.app_context(), tenant(mid):
        assert db.session.get(Voucher, voucher_id).status == "redeemed"
