"""The send pipeline: every consenting customer gets one message, the outbox says
what happened to each, on real SMTP, Redis, PostgreSQL and worker processes."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from rq import SimpleWorker
from sqlalchemy import func, select

from stampweb.campaigns import outbox, rendering, sending
from stampweb.extensions import db, redis_client
from stampweb.messaging import eligibility
from stampweb.models import CONSENT_GRANTED, Customer, utcnow
from stampweb.models.campaigns import Campaign, Message, MessageEvent
from stampweb.tasks.queues import QUEUES, get_queue, set_worker_app
from stampweb.tenancy import tenant

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


def test_a_batch_out_of_time_hands_the_rest_to_a_new_job(app, monkeypatch):
    """A slow mail server must not get the work-horse killed by the job timeout
    mid-DATA: a batch stops at half of SEND_JOB_TIMEOUT, gives its unsent rows
    back and enqueues them. With no time at all, each job sends one message and
    passes the rest on; everybody still gets exactly one."""
    monkeypatch.setattr(sending, "_batch_time_budget", lambda: 0.0)
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        consenting = opted_in(merchant, 4)
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
    run_jobs_inline(app)
    with app.app_context():
        rows = outbox_rows(mid, campaign_id)
        assert sorted(c for c, status, _ in rows if status == "sent") == sorted(consenting)
        with tenant(mid):
            from stampweb.models import MailboxMessage
            from stampweb.models.campaigns import MessageEvent

            assert db.session.scalar(select(func.count(MailboxMessage.id))) == 4
            assert db.session.get(Campaign, campaign_id).status == "sent"
            handed_on = db.session.scalar(
                select(func.count(MessageEvent.id))
                .where(MessageEvent.detail.like("%handed to a new job%"))
            )
            assert handed_on == 3 + 2 + 1


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


def sent_wallet_campaign(app, **merchant_settings) -> tuple[int, int]:
    """A wallet-only campaign to one consenting customer, started and its jobs run:
    (merchant id, campaign id)."""
    with app.app_context():
        merchant = gen_merchant(**merchant_settings)
        mid = merchant.id
        gen_customer(merchant, wallet_consent=CONSENT_GRANTED)
        campaign_id = make_campaign(mid, wallet_text="Two for one today")
        with tenant(mid):
            db.session.get(Campaign, campaign_id).channels = "wallet"
            db.session.commit()
            sending.start(campaign_id)
    run_jobs_inline(app)
    return mid, campaign_id


def test_wallet_channel_is_never_a_silent_success(app):
    # No quiet hours: at night (21:00-09:00 by default) the push would wait.
    mid, campaign_id = sent_wallet_campaign(app, quiet_hours_start=0, quiet_hours_end=0)
    with app.app_context():
        [(_, status, reason)] = outbox_rows(mid, campaign_id)
        assert status == "skipped" and reason in ("wallet_not_configured", "no_device")


def test_quiet_hours_hold_a_wallet_push_until_morning(app):
    """Whatever the hour the test runs, the shop's quiet hours are set to cover it:
    the push goes back to pending, due when they end, and the attempt is not counted."""
    now = utcnow()
    end = (now.hour + 2) % 24
    mid, campaign_id = sent_wallet_campaign(app, quiet_hours_start=now.hour,
                                            quiet_hours_end=end)
    with app.app_context(), tenant(mid):
        message = db.session.scalars(select(Message)).one()
        events = [e.status for e in db.session.scalars(
            select(MessageEvent).where(MessageEvent.message_id == message.id))]
        assert (message.status, message.attempts) == ("pending", 0)
        morning = now.replace(hour=end, minute=0, second=0, microsecond=0)
        if morning <= now:
            morning += timedelta(days=1)
        assert message.next_attempt_at == morning
        assert "deferred" in events
        assert db.session.get(Campaign, campaign_id).status == "sending"


@pytest.mark.parametrize("now_utc, expected", [
    # Tehran is UTC+3:30: 18:00 UTC is 21:30 there, quiet until 09:00 (05:30 UTC).
    (datetime(2026, 11, 23, 18, 0), datetime(2026, 11, 24, 5, 30)),
    # 02:00 UTC is 05:30 there: still quiet, the same morning.
    (datetime(2026, 11, 24, 2, 0), datetime(2026, 11, 24, 5, 30)),
    # 06:00 UTC is 09:30 there: pushes may go.
    (datetime(2026, 11, 24, 6, 0), None),
    # 17:29 UTC is 20:59 there: not yet quiet.
    (datetime(2026, 11, 23, 17, 29), None),
])
def test_quiet_hours_follow_the_shops_time_zone(now_utc, expected):
    shop = SimpleNamespace(timezone="Asia/Tehran", quiet_hours_start=21, quiet_hours_end=9)
    assert eligibility.quiet_until(shop, now_utc) == expected


def test_equal_quiet_hours_mean_none():
    shop = SimpleNamespace(timezone="UTC", quiet_hours_start=0, quiet_hours_end=0)
    for hour in range(24):
        assert eligibility.quiet_until(shop, datetime(2026, 11, 23, hour, 30)) is None


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


@pytest.mark.parametrize("change, expected", [
    ({"email_consent": "withdrawn"}, ("skipped", "no_consent")),
    ({"email_suppressed_at": True}, ("skipped", "suppressed")),
    ({"email_confirmed_at": None}, ("skipped", "no_consent")),
    ({"email": ""}, ("skipped", "no_address")),
    ({"email": "moved@example.com"}, ("sent", None)),
])
def test_a_change_during_the_batch_counts_at_the_moment_of_sending(app, monkeypatch, change,
                                                                   expected):
    """A batch loads its customers once; a consent or address change made after that,
    while earlier messages go out, still decides this message (the in-flight statement
    re-checks it), and a new address is the one the message goes to."""
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        first, second = opted_in(merchant, 2)
        campaign_id = make_campaign(mid)
        build = sending._Emails.build

        def build_then_change(self, message, customer, card):
            email = build(self, message, customer, card)
            if customer.id == second:
                values = {k: (utcnow() if v is True else v) for k, v in change.items()}
                with db.engine.begin() as connection:  # another process, in effect
                    connection.execute(Customer.__table__.update()
                                       .where(Customer.__table__.c.id == second).values(values))
            return email

        monkeypatch.setattr(sending._Emails, "build", build_then_change)
        with tenant(mid):
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            ids = [m.id for m in db.session.scalars(select(Message).order_by(Message.id))]
            outcome = sending.send_batch(campaign_id, ids)
            db.session.commit()
            from stampweb.models import MailboxMessage

            mailbox = [m.to_address for m in db.session.scalars(select(MailboxMessage))]
        rows = {cid: (status, reason) for cid, status, reason in outbox_rows(mid, campaign_id)}
    assert rows[first] == ("sent", None)
    assert rows[second] == expected
    assert outcome["sent"] == 1 + (expected[0] == "sent")
    if expected[0] == "sent":
        assert mailbox[-1] == change["email"]
    assert len(mailbox) == outcome["sent"]


@pytest.mark.parametrize("voucher", [None, "A free coffee"])
def test_the_next_message_is_built_while_one_is_sent_unless_building_writes(
    app, monkeypatch, voucher
):
    """While a message is on the wire the next one is built, so the worker's work
    overlaps the server's; a campaign with a voucher issues it as it builds, so
    there each message is built only in its turn. Either way each customer gets
    their own message once."""
    from stampweb.messaging import transport
    from stampweb.models import MailboxMessage

    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        customers = opted_in(merchant, 3)
        campaign_id = make_campaign(mid, voucher_title=voucher)
        log = []
        build, send = sending._Emails.build, transport.MailboxConnection.send

        def logged_build(self, message, customer, card):
            log.append(f"build {customers.index(customer.id)}")
            return build(self, message, customer, card)

        def logged_send(self, msg, **kwargs):
            send(self, msg, **kwargs)
            log.append("sent")

        monkeypatch.setattr(sending._Emails, "build", logged_build)
        monkeypatch.setattr(transport.MailboxConnection, "send", logged_send)
        with tenant(mid):
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            ids = [m.id for m in db.session.scalars(select(Message).order_by(Message.id))]
            assert sending.send_batch(campaign_id, ids)["sent"] == 3
            mailbox = [m.to_address for m in db.session.scalars(
                select(MailboxMessage).order_by(MailboxMessage.id))]
            emails = [db.session.get(Customer, cid).email for cid in customers]
    if voucher:
        assert log == ["build 0", "sent", "build 1", "sent", "build 2", "sent"]
    else:
        assert log == ["build 0", "build 1", "sent", "build 2", "sent", "sent"]
    assert mailbox == emails


def test_a_batch_finishes_with_none_of_its_rows_in_the_session(app, monkeypatch):
    """The session holds loaded rows weakly: by the time the batch checks whether
    the campaign is done, its messages, customers and cards (a thousand each in
    a real batch) are gone from it, so that check's commit has none to expire."""
    held = []
    finish_if_done = sending.finish_if_done

    def noting_what_is_held(campaign_id):
        held.extend(type(obj).__name__ for obj in db.session.identity_map.values())
        return finish_if_done(campaign_id)

    monkeypatch.setattr(sending, "finish_if_done", noting_what_is_held)
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        opted_in(merchant, 3)
        campaign_id = make_campaign(mid)
        with tenant(mid):
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            ids = list(db.session.scalars(select(Message.id)))
            assert sending.send_batch(campaign_id, ids)["sent"] == 3
    assert held and not set(held) & {"Message", "Customer", "Card"}, held


# --- integration: real SMTP, Redis, PostgreSQL and workers ----------------------


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


# The fault suite (kill -9, Redis restart, 451/550, a hung server, an error
# burst) lives in tests/test_faults.py.


@pytest.mark.integration
@pytest.mark.parametrize("change, expected", [
    ({"email_consent": "withdrawn"}, ("skipped", "no_consent")),
    ({"email": "moved@example.com"}, ("sent", None)),
])
def test_on_smtp_a_change_while_the_server_takes_mail_and_rcpt_still_counts(
    mail_app, smtp, monkeypatch, change, expected
):
    """On PostgreSQL the in-flight statement runs while the server takes MAIL and
    RCPT. A customer who withdrew consent a moment before gets no DATA (the
    transaction is reset), one who changed address gets the message at the new
    one, and the customers after them are sent as usual over the same connection."""
    with mail_app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        customers = opted_in(merchant, 3)
        campaign_id = make_campaign(mid)
        build = sending._Emails.build

        def build_then_change(self, message, customer, card):
            email = build(self, message, customer, card)
            if customer.id == customers[0] and customer.email != change.get("email"):
                with db.engine.begin() as connection:  # another process, in effect
                    connection.execute(Customer.__table__.update()
                                       .where(Customer.__table__.c.id == customers[0])
                                       .values(change))
            return email

        monkeypatch.setattr(sending._Emails, "build", build_then_change)
        with tenant(mid):
            sending.start(campaign_id)
            sending.fanout(campaign_id)
            ids = [m.id for m in db.session.scalars(select(Message).order_by(Message.id))]
            sending.send_batch(campaign_id, ids)
            emails = dict(db.session.execute(select(Customer.id, Customer.email)).all())
            db.session.commit()
        rows = {cid: (status, reason) for cid, status, reason in outbox_rows(mid, campaign_id)}
    assert rows[customers[0]] == expected
    assert rows[customers[1]] == rows[customers[2]] == ("sent", None)
    delivered = [m.rcpt_tos for m in smtp.wait_for(2 + (expected[0] == "sent"))]
    assert sorted(delivered) == sorted((emails[c],) for c in customers if rows[c][0] == "sent")
    assert smtp.data_count == len(delivered)
