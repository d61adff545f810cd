"""The send pipeline: every consenting customer gets one message, the outbox says
what happened to each, on real SMTP, Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from rq import SimpleWorker
from sqlalchemy import func, select

from stampweb.campaigns import outbox, rendering, sending
from stampweb.extensions import db, redis_client
from stampweb.models import CONSENT_GRANTED, Customer, utcnow
from stampweb.models.campaigns import Campaign, Message, MessageEvent
from stampweb.tasks.queues import QUEUES, get_queue, set_worker_app
from stampweb.tenancy import tenant

from . import servers
from .conftest import wait_until
from .factories import gen_customer, gen_merchant


def opted_in(merchant, n, **kwargs):
    return [
        gen_customer(merchant, email_consent=CONSENT_GRANTED, email_confirmed_at=utcnow(),
                     **kwargs).id
        for _ in range(n)
    ]


def make_campaign(merchant_id, **fields) -> int:
    with tenant(merchant_id):
        campaign = Campaign(
            merchant_id=merchant_id, name="Weekend offer", channels="email",
            subject="Hi {first_name|friend}, {stamps_left} stamps to go",
            preheader="Only this weekend", body_markdown="**Two for one** at {reward}.\n\n"
            "[Your card]({card_url}) <script>alert(1)</script>",
            audience={"type": "all"}, **fields,
        )
        db.session.add(campaign)
        db.session.commit()
        return campaign.id


def outbox_rows(merchant_id, campaign_id):
    with tenant(merchant_id):
        return db.session.execute(
            select(Message.customer_id, Message.status, Message.skip_reason)
            .where(Message.campaign_id == campaign_id)
        ).all()


def run_jobs_inline(app):
    """Drain every queue with rq's SimpleWorker in this process (unit tests)."""
    set_worker_app(app)
    with app.app_context():
        connection = redis_client()
        SimpleWorker([get_queue(q, connection) for q in QUEUES],
                     connection=connection).work(burst=True)


# --- unit: rendering and eligibility --------------------------------------------


def test_placeholders_use_fallbacks_and_escape_html():
    values = {"first_name": "", "stamps": "3", "voucher_code": "<b>X</b>"}
    assert rendering.personalise("Hi {first_name|friend}!", values) == "Hi friend!"
    assert rendering.personalise("{voucher_code}", values, html=True) == "&lt;b&gt;X&lt;/b&gt;"
    assert rendering.personalise("{stamps} {stamps_left|?}", values) == "3 ?"


def test_markdown_is_sanitised():
    html = rendering.markdown_to_safe_html(
        "**hi** <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=y>"
    )
    assert "<strong>hi</strong>" in html
    assert "<script" not in html and "javascript:" not in html and "onerror" not in html


def test_unknown_placeholders_are_reported():
    assert rendering.unknown_placeholders("Hi {frist_name} {stamps}") == ["frist_name"]


def test_sqlite_pipeline_sends_once_and_records_skips(app):
    """SQLite + fakeredis + in-process worker: the same promises as on PostgreSQL."""
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        consenting = opted_in(merchant, 3)
        no_consent = gen_customer(merchant).id
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
    run_jobs_inline(app)
    with app.app_context():
        rows = dict((cid, (status, reason)) for cid, status, reason
                    in outbox_rows(mid, campaign_id))
        assert {rows[c] for c in consenting} == {("sent", None)}
        assert rows[no_consent] == ("skipped", "no_consent")
        with tenant(mid):
            assert db.session.get(Campaign, campaign_id).status == "sent"
            # The development mailbox kept the three messages.
            from stampweb.models import MailboxMessage

            assert db.session.scalar(select(func.count(MailboxMessage.id))) == 3
        # Starting again adds nothing: the outbox key holds.
        with tenant(mid):
            assert outbox.materialise(mid, campaign_id, consenting, ["email"]) == 0


def test_frequency_cap_skips_the_extra_message(app):
    with app.app_context():
        merchant = gen_merchant(frequency_cap=1)
        mid = merchant.id
        [customer_id] = opted_in(merchant, 1)
        first = make_campaign(mid)
        second = make_campaign(mid)
        with tenant(mid):
            sending.start(first)
    run_jobs_inline(app)
    with app.app_context(), tenant(mid):
        sending.start(second)
    run_jobs_inline(app)
    with app.app_context():
        assert outbox_rows(mid, second) == [(customer_id, "skipped", "capped")]


def test_wallet_channel_is_never_a_silent_success(app):
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        gen_customer(merchant, wallet_consent=CONSENT_GRANTED)
        campaign_id = make_campaign(mid, wallet_text="Two for one today")
        with tenant(mid):
            db.session.get(Campaign, campaign_id).channels = "wallet"
            db.session.commit()
            sending.start(campaign_id)
    run_jobs_inline(app)
    with app.app_context():
        [(_, status, reason)] = outbox_rows(mid, campaign_id)
        assert status == "skipped" and reason in ("wallet_not_configured", "no_device")


def test_pause_releases_and_cancel_skips(app):
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        opted_in(merchant, 4)
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            sending.pause(campaign_id, "checking the text")
            ids = [m.id for m in db.session.scalars(select(Message))]
            assert sending.send_batch(campaign_id, ids)["sent"] == 0  # nothing claimed
            sending.cancel(campaign_id)
            statuses = {m.skip_reason for m in db.session.scalars(select(Message))}
            assert statuses == {"cancelled"}


# --- integration: real SMTP, Redis, PostgreSQL and workers ----------------------


@pytest.fixture
def smtp():
    with servers.SmtpSink() as sink:
        yield sink


@pytest.fixture
def mail_app(pg_app, smtp):
    pg_app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_TIMEOUT=3)
    return pg_app


@pytest.mark.integration
def test_campaign_reaches_each_consenting_customer_exactly_once(mail_app, smtp, workers):
    with mail_app.app_context():
        merchant = gen_merchant(postal_address="1 Main St")
        mid = merchant.id
        consenting = opted_in(merchant, 25)
        unconfirmed = gen_customer(merchant, email_consent="pending").id
        suppressed = gen_customer(merchant, email_consent=CONSENT_GRANTED,
                                  email_confirmed_at=utcnow(),
                                  email_suppressed_at=utcnow()).id
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
    workers.start(2)
    wait_until(lambda: len(smtp.messages) >= 25, timeout=60, message="25 emails")
    with mail_app.app_context(), tenant(mid):
        wait_until(lambda: db.session.get(Campaign, campaign_id).status == "sent"
                   or db.session.rollback(), timeout=30, message="campaign sent")
        rows = {cid: (status, reason) for cid, status, reason
                in outbox_rows(mid, campaign_id)}
        emails = dict(db.session.execute(select(Customer.id, Customer.email)).all())
    assert smtp.data_count == 25
    recipients = sorted(r for m in smtp.messages for r in m.rcpt_tos)
    assert recipients == sorted(emails[c] for c in consenting)
    assert rows[unconfirmed] == ("skipped", "no_consent")
    assert rows[suppressed] == ("skipped", "suppressed")
    message = smtp.messages[0].message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = str(message["List-Unsubscribe"]).strip()
    assert unsubscribe.startswith("<http") and "mailto:" in unsubscribe
    assert message["List-Id"] and message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",)).get_content()
    assert "<strong>Two for one</strong>" in html and "<script" not in html
    assert "1 Main St" in html
    assert "stamps to go" in message["Subject"]


@pytest.mark.integration
def test_unsubscribe_between_fanout_and_send_is_honoured(mail_app, smtp):
    with mail_app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        stay, leave = opted_in(merchant, 2)
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            customer = db.session.get(Customer, leave)
            customer.email_consent = "withdrawn"
            db.session.commit()
            ids = [m.id for m in db.session.scalars(select(Message))]
            outcome = sending.send_batch(campaign_id, ids)
    assert outcome["sent"] == 1 and outcome["skipped"] == 1
    assert [m.rcpt_tos for m in smtp.messages] == [(smtp.messages[0].rcpt_tos[0],)]
    with mail_app.app_context():
        rows = dict((c, s) for c, s, _ in outbox_rows(mid, campaign_id))
    assert rows == {stay: "sent", leave: "skipped"}


@pytest.mark.integration
def test_smtp_451_is_retried_with_backoff_and_550_suppresses(mail_app, smtp):
    with mail_app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        ok, bounce = opted_in(merchant, 2)
        campaign_id = make_campaign(mid)
        with tenant(mid):
            bounce_email = db.session.get(Customer, bounce).email
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            smtp.reject_addresses = {bounce_email}
            smtp.fail_next(1, mode="tempfail")
            ids = [m.id for m in db.session.scalars(select(Message).order_by(Message.id))]
            first = sending.send_batch(campaign_id, ids)
            assert first["retry"] == 1 and first["failed"] == 1
            retry_row = db.session.scalar(select(Message).where(Message.customer_id == ok))
            assert retry_row.status == "pending" and retry_row.next_attempt_at > utcnow()
            # Not due yet: a second batch now sends nothing.
            assert sending.send_batch(campaign_id, ids)["sent"] == 0
            retry_row.next_attempt_at = utcnow() - timedelta(seconds=1)
            db.session.commit()
            assert sending.send_batch(campaign_id, ids)["sent"] == 1
            assert db.session.get(Customer, bounce).email_suppressed_at is not None
            history = [e.status for e in db.session.scalars(
                select(MessageEvent).where(MessageEvent.message_id == retry_row.id)
                .order_by(MessageEvent.id))]
            assert history == ["retry", "sent"]


@pytest.mark.integration
def test_worker_killed_mid_batch_sends_nothing_twice(mail_app, smtp, workers):
    """SIGKILL the work-horse while it is inside DATA; restart; reconcile."""
    with mail_app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        customers = opted_in(merchant, 12)
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
    smtp.fail_after = None
    smtp.mode = "ok"
    workers.start(1)
    wait_until(lambda: smtp.data_count >= 4, timeout=60, message="some emails sent")
    smtp.mode = "hang"
    wait_until(lambda: smtp.hanging >= 1, timeout=30, message="a hung DATA")
    horses = [child for proc in workers.processes for child in _children(proc.pid)]
    assert horses, "no work-horse found"
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    workers.stop()
    smtp.mode = "ok"
    smtp.release()
    with mail_app.app_context(), tenant(mid):
        # The killed row's lease runs out; the reconciler calls it unknown and
        # re-enqueues what is still pending.
        sending.reconcile(now=utcnow() + outbox.LEASE + timedelta(seconds=1),
                          stale_after=timedelta(0))
    workers.start(1)
    with mail_app.app_context(), tenant(mid):
        wait_until(lambda: db.session.get(Campaign, campaign_id).status == "sent"
                   or db.session.rollback(), timeout=60, message="campaign sent")
        rows = outbox_rows(mid, campaign_id)
        emails = dict(db.session.execute(select(Customer.id, Customer.email)).all())
    statuses = {cid: status for cid, status, _ in rows}
    assert set(statuses) == set(customers)
    assert set(statuses.values()) <= {"sent", "unknown"}
    assert list(statuses.values()).count("unknown") <= 1
    delivered = [r for m in smtp.messages for r in m.rcpt_tos]
    assert len(delivered) == len(set(delivered)), "someone got two emails"
    for cid, status in statuses.items():
        if status == "sent":
            assert emails[cid] in delivered


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (the RQ work-horse forked by a worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found
