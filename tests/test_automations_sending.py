"""Automation messages go through the campaign outbox and sender: consent, voucher codes,
the reminders opt-in, and campaigns that stay live (SQLite + in-process worker)."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timedelta

from flask import render_template
from sqlalchemy import select

from stampweb import links
from stampweb.automations import engine, manage
from stampweb.extensions import db
from stampweb.loyalty import vouchers
from stampweb.models import (
    CONSENT_GRANTED,
    CustomerTag,
    MailboxMessage,
    Merchant,
    Tag,
    Voucher,
    utcnow,
)
from stampweb.models.campaigns import Campaign, Message
from stampweb.tenancy import tenant

from .factories import gen_customer, gen_merchant
from .test_automations_engine import switch_on
from .test_campaign_sending import run_jobs_inline


def mailbox(merchant_id) -> list[email.message.EmailMessage]:
    with tenant(merchant_id):
        return [email.message_from_bytes(raw, policy=email.policy.default)
                for raw in db.session.scalars(select(MailboxMessage.raw)
                                              .order_by(MailboxMessage.id))]


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def statuses(merchant_id, kind):
    flow = manage.get_flow(merchant_id, kind)
    with tenant(merchant_id):
        return db.session.execute(
            select(Message.customer_id, Message.status, Message.skip_reason)
            .where(Message.campaign_id == flow.campaign_id).order_by(Message.customer_id)
        ).all()


def test_birthday_voucher_code_reaches_the_customer_and_redeems(app):
    """The voucher exists before the message goes, its code is in the email, and the
    flow's campaign stays live after everything is sent."""
    now = utcnow()
    birthday = (now + timedelta(days=2)).date()
    with app.app_context():
        merchant = gen_merchant(timezone="UTC")
        mid = merchant.id
        ann = gen_customer(merchant, email_consent=CONSENT_GRANTED, email_confirmed_at=now,
                           birthday_month=birthday.month, birthday_day=birthday.day).id
        switch_on(merchant, "birthday", now - timedelta(days=1), hour=0)
        with tenant(mid):
            campaign = db.session.get(Campaign, manage.get_flow(mid, "birthday").campaign_id)
            campaign.body_markdown += "\n\nYour code: {voucher_code}"
            campaign_id = campaign.id
            db.session.commit()
        engine.run(now=now)
    run_jobs_inline(app)
    with app.app_context():
        [message] = mailbox(mid)
        with tenant(mid):
            voucher = db.session.scalar(select(Voucher).where(Voucher.customer_id == ann))
        assert voucher.kind == "birthday"
        assert f"Your code: {voucher.code}" in text_of(message)
        assert statuses(mid, "birthday") == [(ann, "sent", None)]
        with tenant(mid):
            assert db.session.get(Campaign, campaign_id).status == "sending"
        vouchers.redeem(mid, voucher.id, staff_user_id=None)
        assert manage.results(mid, "birthday")["vouchers_redeemed"] == 1


def test_reminders_follow_the_reminders_opt_in_not_marketing(app):
    """Tag-based notifications go to customers who agreed to reminders, even without
    marketing consent, and skip marketing-only customers."""
    now = utcnow()
    with app.app_context():
        merchant = gen_merchant(timezone="UTC")
        mid = merchant.id
        wants_reminders = gen_customer(merchant, reminders_consent=CONSENT_GRANTED).id
        marketing_only = gen_customer(merchant, email_consent=CONSENT_GRANTED,
                                      email_confirmed_at=now).id
        with tenant(mid):
            tag = Tag(merchant_id=mid, name="spent but profile incomplete")
            db.session.add(tag)
            db.session.flush()
            for cid in (wants_reminders, marketing_only):
                db.session.add(CustomerTag(merchant_id=mid, customer_id=cid, tag_id=tag.id,
                                           created_at=now - timedelta(days=1)))
            db.session.commit()
            tag_id = tag.id
        switch_on(merchant, "tag_notify", now - timedelta(days=1), hour=0, tag_id=tag_id)
        engine.run(now=now)
    run_jobs_inline(app)
    with app.app_context():
        assert statuses(mid, "tag_notify") == [
            (wants_reminders, "sent", None), (marketing_only, "skipped", "no_consent")]


def test_reminder_email_shows_missing_steps_and_the_profile_link(app):
    """templates/email/reminder_campaign.*: status, missing steps, the preferences link
    that completes the profile, and a footer link that stops reminders only."""
    with app.app_context(), app.test_request_context():
        merchant = gen_merchant()
        customer = gen_customer(merchant, reminders_consent=CONSENT_GRANTED)
        with tenant(merchant.id):
            merchant = db.session.get(Merchant, merchant.id)
            context = dict(merchant=merchant, customer=customer, kind="tag_notify",
                           body="Hi", preheader="", prefs_url=links.prefs_url(customer),
                           unsubscribe_url=links.unsubscribe_url(customer, "reminders"))
            html = render_template("email/reminder_campaign.html", **context)
            text = render_template("email/reminder_campaign.txt", **context)
        token = context["unsubscribe_url"].rsplit("/", 1)[1]
        assert links.verify_unsubscribe_token(token).channel == "reminders"
    assert "Add your birthday" in text and "Confirm your email address." in text
    assert f"Complete your profile: {context['prefs_url']}" in text
    assert "Stop reminders" in html and context["unsubscribe_url"] in html


def test_cli_dry_run_prints_who_would_get_what_and_sends_nothing(app, runner):
    now = utcnow()
    birthday = (now + timedelta(days=1)).date()
    with app.app_context():
        merchant = gen_merchant(slug="cli-cafe", timezone="UTC")
        mid = merchant.id
        gen_customer(merchant, first_name="Ida", last_name="Dry", email_consent=CONSENT_GRANTED,
                     birthday_month=birthday.month, birthday_day=birthday.day)
        switch_on(merchant, "birthday", now - timedelta(days=1), hour=0)
    result = runner.invoke(args=["automations", "run", "--merchant", "cli-cafe", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "cli-cafe / birthday" in result.output
    assert f"Ida Dry [birthday-{birthday.year}] by email + A birthday treat" in result.output
    with app.app_context():
        assert statuses(mid, "birthday") == []
    result = runner.invoke(args=["automations", "run", "--merchant", "cli-cafe"])
    assert result.exit_code == 0, result.output
    assert "Fired 1; 1 messages queued." in result.output
    result = runner.invoke(args=["automations", "run", "--merchant", "nope"])
    assert result.exit_code != 0 and "No merchant" in result.output


def test_cron_job_is_registered_every_15_minutes():
    """`rq cron stampweb.tasks.cron` runs the engine every 15 minutes."""
    import fakeredis
    from rq.cron import CronScheduler

    # Loaded the way the scheduler loads it (rq's module-level registry is
    # emptied once a scheduler has read it, so another test may have done so).
    scheduler = CronScheduler(connection=fakeredis.FakeRedis())
    scheduler.load_config_from_file("stampweb.tasks.cron")
    [job] = [j for j in scheduler.get_jobs() if j.func_name.endswith(".run_automations")]
    assert job.cron == "*/15 * * * *"


def test_frozen_now_does_not_leak_into_send_times(app):
    """The engine selects with the frozen `now`; rows are due by the real clock."""
    with app.app_context():
        merchant = gen_merchant(timezone="UTC")
        mid = merchant.id
        gen_customer(merchant, email_consent=CONSENT_GRANTED, email_confirmed_at=utcnow(),
                     birthday_month=1, birthday_day=3)
        switch_on(merchant, "birthday", datetime(2030, 12, 30), hour=0)
        engine.run(now=datetime(2030, 12, 31, 1, 0))
    run_jobs_inline(app)
    with app.app_context():
        assert [s for _c, s, _r in statuses(mid, "birthday")] == ["sent"]
