"""The automation engine: who each flow fires for, on which local date, exactly once.

Time is frozen by passing `now` (naive UTC) to the engine; the merchant's
time zone decides the local date and hour.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from stampweb.automations import engine, manage
from stampweb.automations.flows.birthday import next_birthday
from stampweb.extensions import db
from stampweb.loyalty import badges, vouchers
from stampweb.models import (
    CONSENT_GRANTED,
    CONSENT_PENDING,
    AutomationFiring,
    AutomationFlow,
    Card,
    Customer,
    CustomerTag,
    Tag,
    Voucher,
)
from stampweb.models.campaigns import Campaign, Message
from stampweb.tenancy import tenant

from .factories import card_of, gen_customer, gen_merchant


def at(zone: str, *args) -> datetime:
    """The naive-UTC instant of a local wall-clock time in `zone`."""
    local = datetime(*args, tzinfo=ZoneInfo(zone))
    return local.astimezone(UTC).replace(tzinfo=None)


def switch_on(merchant, kind, now, *, hour=10, channels="email", **settings):
    flow = manage.get_flow(merchant.id, kind)
    with tenant(merchant.id):
        campaign = db.session.get(Campaign, flow.campaign_id)
        content = {n: getattr(campaign, n) for n in manage.CONTENT_FIELDS}
        merged = {**flow.settings, **settings}
    manage.save_flow(merchant.id, kind, settings=merged, local_hour=hour,
                     channels=channels, content=content)
    return manage.set_enabled(merchant.id, kind, True, now=now)


def firings(merchant, kind=None):
    with tenant(merchant.id):
        query = select(AutomationFiring.customer_id, AutomationFiring.occurrence,
                       AutomationFiring.local_date).order_by(AutomationFiring.id)
        if kind:
            query = query.join(AutomationFlow).where(AutomationFlow.kind == kind)
        return db.session.execute(query).all()


def outbox_rows(merchant, kind):
    flow = manage.get_flow(merchant.id, kind)
    with tenant(merchant.id):
        return db.session.execute(
            select(Message.customer_id, Message.channel, Message.occurrence, Message.voucher_id)
            .where(Message.campaign_id == flow.campaign_id).order_by(Message.id)
        ).all()


def customer(merchant, **fields):
    fields.setdefault("email_consent", CONSENT_GRANTED)
    return gen_customer(merchant, **fields)


# --- birthday, across time zones --------------------------------------------------


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Honolulu", "UTC"])
def test_birthday_fires_n_days_before_at_the_local_hour(app, zone):
    """UTC+14 and UTC−10: the firing follows the merchant's calendar and clock, not UTC's."""
    with app.app_context():
        merchant = gen_merchant(timezone=zone)
        alice = customer(merchant, birthday_month=12, birthday_day=4)
        switch_on(merchant, "birthday", at(zone, 2026, 11, 30, 8, 0))
        # 1 December, 09:59 local: the hour has not come.
        engine.run(now=at(zone, 2026, 12, 1, 9, 59))
        assert firings(merchant) == []
        engine.run(now=at(zone, 2026, 12, 1, 10, 0))
        assert firings(merchant) == [(alice.id, "birthday-2026", date(2026, 12, 1))]
        [(_, channel, occurrence, voucher_id)] = outbox_rows(merchant, "birthday")
        assert (channel, occurrence) == ("email", "birthday-2026")
        with tenant(merchant.id):
            voucher = db.session.get(Voucher, voucher_id)
            assert voucher.kind == "birthday" and voucher.customer_id == alice.id
            # Valid for the window (14 days) from the local day it was issued.
            assert voucher.expires_at == at(zone, 2026, 12, 15, 0, 0)
            assert [b.kind for b in badges.for_card(card_of(alice))] == ["birthday"]


def test_dst_change_keeps_the_local_hour(app):
    """On the night clocks go forward (Berlin, 29 March 2026) the flow still fires at
    10:00 local, which is 08:00 UTC instead of 09:00, once."""
    zone = "Europe/Berlin"
    with app.app_context():
        merchant = gen_merchant(timezone=zone)
        bob = customer(merchant, birthday_month=4, birthday_day=1)
        switch_on(merchant, "birthday", at(zone, 2026, 3, 28, 12, 0))
        engine.run(now=datetime(2026, 3, 29, 7, 59))  # 09:59 CEST
        assert firings(merchant) == []
        engine.run(now=datetime(2026, 3, 29, 8, 0))  # 10:00 CEST
        assert firings(merchant) == [(bob.id, "birthday-2026", date(2026, 3, 29))]
        engine.run(now=datetime(2026, 3, 29, 9, 0))
        assert len(firings(merchant)) == 1


def test_double_run_fires_once(app):
    """Two runs of the same moment, and a third later the same day: one voucher, one message."""
    with app.app_context():
        merchant = gen_merchant()
        carol = customer(merchant, birthday_month=6, birthday_day=10)
        switch_on(merchant, "birthday", datetime(2026, 6, 1))
        now = datetime(2026, 6, 7, 11, 0)
        engine.run(now=now)
        engine.run(now=now)
        engine.run(now=now + timedelta(hours=5))
        # A run that lost the race finds the checkpoint moved and does nothing.
        with tenant(merchant.id):
            flow = db.session.scalar(select(AutomationFlow).filter_by(kind="birthday"))
            fired, added = engine._evaluate(merchant.id, flow.id, date(2026, 6, 7), now)
            assert (fired, added) == ([], 0)
            assert db.session.scalar(select(func.count(Voucher.id))) == 1
        assert len(outbox_rows(merchant, "birthday")) == 1
        assert firings(merchant)[0][0] == carol.id


def test_catch_up_after_downtime_fires_every_missed_day(app):
    """The engine was down for three days: each day's win-back fires on the next run,
    keyed by the date of the last visit."""
    with app.app_context():
        merchant = gen_merchant()
        switch_on(merchant, "winback", datetime(2026, 5, 1, 9, 0), days=30)
        engine.run(now=datetime(2026, 5, 1, 12, 0))
        visits = {day: date(2026, 5, day) - timedelta(days=30) for day in (2, 3, 4)}
        lapsed = {
            day: customer(merchant, visit_count=2,
                          last_visit_at=datetime.combine(visit, datetime.min.time())
                          + timedelta(hours=15)).id
            for day, visit in visits.items()
        }
        # Nothing ran on 2, 3, 4 May; the run on 4 May at 23:00 catches up.
        engine.run(now=datetime(2026, 5, 4, 23, 0))
        got = {cid: (occ, d) for cid, occ, d in firings(merchant)}
        assert got == {
            lapsed[day]: (f"winback-{visits[day].isoformat()}", date(2026, 5, day))
            for day in (2, 3, 4)
        }


def test_catch_up_is_bounded(app):
    """After a month of downtime only the last MAX_CATCH_UP_DAYS days are evaluated."""
    with app.app_context():
        merchant = gen_merchant()
        switch_on(merchant, "winback", datetime(2026, 5, 1, 9, 0))
        runs = engine.run(now=datetime(2026, 6, 15, 12, 0))
        assert len(runs[0].dates) == engine.MAX_CATCH_UP_DAYS
        assert runs[0].dates[-1] == date(2026, 6, 15)


# --- birthday specifics -------------------------------------------------------------


def test_29_february_birthdays():
    """Born on 29 February: the 28th in common years, the 29th in leap years."""
    assert next_birthday(2, 29, date(2027, 2, 1)) == date(2027, 2, 28)
    assert next_birthday(2, 29, date(2028, 2, 1)) == date(2028, 2, 29)
    assert next_birthday(2, 29, date(2027, 3, 1)) == date(2028, 2, 29)


def test_29_february_birthday_fires_once_a_year(app):
    with app.app_context():
        merchant = gen_merchant()
        leapling = customer(merchant, birthday_month=2, birthday_day=29)
        switch_on(merchant, "birthday", datetime(2027, 2, 20))
        for day in range(21, 29):
            engine.run(now=datetime(2027, 2, day, 12, 0))
        assert firings(merchant) == [(leapling.id, "birthday-2027", date(2027, 2, 25))]
        manage.set_enabled(merchant.id, "birthday", False)
        switch_on(merchant, "birthday", datetime(2028, 2, 20))
        for day in range(21, 30):
            engine.run(now=datetime(2028, 2, day, 12, 0))
        assert firings(merchant)[1] == (leapling.id, "birthday-2028", date(2028, 2, 26))


def test_birthday_added_inside_the_window_is_honoured_once(app):
    """Adding a birthday two days ahead still brings the gift at the next firing;
    changing it again the same year brings no second gift."""
    with app.app_context():
        merchant = gen_merchant()
        dan = customer(merchant)
        switch_on(merchant, "birthday", datetime(2026, 9, 1))
        engine.run(now=datetime(2026, 9, 8, 12, 0))
        with tenant(merchant.id):
            row = db.session.get(Customer, dan.id)
            row.birthday_month, row.birthday_day = 9, 10
            db.session.commit()
        engine.run(now=datetime(2026, 9, 9, 12, 0))
        assert firings(merchant) == [(dan.id, "birthday-2026", date(2026, 9, 9))]
        with tenant(merchant.id):
            row = db.session.get(Customer, dan.id)
            row.birthday_month, row.birthday_day = 9, 20
            db.session.commit()
        for day in range(10, 21):
            engine.run(now=datetime(2026, 9, day, 12, 0))
        assert len(firings(merchant)) == 1
        # A birthday that has already passed this year waits for next year.
        eve = customer(merchant, birthday_month=9, birthday_day=1)
        engine.run(now=datetime(2026, 9, 21, 12, 0))
        assert eve.id not in {cid for cid, _o, _d in firings(merchant)}


def test_birthday_card_state_mode(app):
    """The "birthday gift available" state is set on the card until the staff give it."""
    with app.app_context():
        merchant = gen_merchant()
        fay = customer(merchant, birthday_month=7, birthday_day=4)
        switch_on(merchant, "birthday", datetime(2026, 6, 20), mode="card_state", window_days=10)
        engine.run(now=datetime(2026, 7, 1, 12, 0))
        card = card_of(fay)
        assert card.reward_state == "birthday_gift"
        assert card.reward_state_expires_at == datetime(2026, 7, 11)
        assert [b.kind for b in badges.for_card(card, now=datetime(2026, 7, 2))] == ["birthday"]
        [(_, _, _, voucher_id)] = outbox_rows(merchant, "birthday")
        assert voucher_id is None
        vouchers.give_birthday_gift(merchant.id, card.id, staff_user_id=None,
                                    now=datetime(2026, 7, 3))
        assert card_of(fay).reward_state == "none"


# --- win-back -------------------------------------------------------------------------


def test_winback_once_per_lapse_and_a_visit_resets_it(app):
    with app.app_context():
        merchant = gen_merchant()
        gus = customer(merchant, visit_count=3, last_visit_at=datetime(2026, 3, 1, 12, 0))
        switch_on(merchant, "winback", datetime(2026, 3, 1), days=30)
        for day in range(28, 32):
            engine.run(now=datetime(2026, 3, day, 12, 0))
        assert firings(merchant) == [(gus.id, "winback-2026-03-01", date(2026, 3, 31))]
        with tenant(merchant.id):
            db.session.get(Customer, gus.id).last_visit_at = datetime(2026, 4, 2, 9, 0)
            db.session.commit()
        for day in range(1, 4):
            engine.run(now=datetime(2026, 5, day, 12, 0))
        assert firings(merchant)[1] == (gus.id, "winback-2026-04-02", date(2026, 5, 2))


def test_winback_second_step_and_never_visited(app):
    with app.app_context():
        merchant = gen_merchant()
        regular = customer(merchant, visit_count=5, last_visit_at=datetime(2026, 1, 1, 12, 0))
        newbie = customer(merchant, visit_count=0, joined_at=datetime(2026, 2, 1, 12, 0))
        switch_on(merchant, "winback", datetime(2026, 1, 1), days=30, never_visited_days=14,
                  voucher_title="A free pastry")
        switch_on(merchant, "winback2", datetime(2026, 1, 1), days=45,
                  voucher_title="Two for one")
        for day in range(1, 20):
            engine.run(now=datetime(2026, 1, 31, 12, 0) + timedelta(days=day - 1))
        got = {(kind, cid, occ) for kind in ("winback", "winback2")
               for cid, occ, _d in firings(merchant, kind)}
        assert got == {
            ("winback", regular.id, "winback-2026-01-01"),
            ("winback", newbie.id, "winback-new-2026-02-01"),
            ("winback2", regular.id, "winback2-2026-01-01"),
        }
        with tenant(merchant.id):
            titles = sorted(db.session.scalars(select(Voucher.title)))
        assert titles == ["A free pastry", "A free pastry", "Two for one"]


# --- reward-ready and voucher expiry --------------------------------------------------


def test_reward_ready_k_stamps_away_and_d_days_idle(app):
    with app.app_context():
        merchant = gen_merchant()
        close = customer(merchant, visit_count=9, last_visit_at=datetime(2026, 4, 1, 12, 0))
        far = customer(merchant, visit_count=2, last_visit_at=datetime(2026, 4, 1, 12, 0))
        with tenant(merchant.id):
            db.session.get(Card, card_of(close).id).stamps = 9  # of 10
            db.session.get(Card, card_of(far).id).stamps = 2
            db.session.commit()
        switch_on(merchant, "reward_ready", datetime(2026, 4, 1), stamps_away=1, idle_days=7)
        for day in range(2, 12):
            engine.run(now=datetime(2026, 4, day, 12, 0))
        assert firings(merchant) == [(close.id, "ready-2026-04-01", date(2026, 4, 8))]


def test_voucher_expiry_reminder_days_before(app):
    with app.app_context():
        merchant = gen_merchant()
        holder = customer(merchant)
        with tenant(merchant.id):
            voucher = vouchers.issue(merchant.id, holder.id, kind="reward", title="Coffee",
                                     expires_at=datetime(2026, 8, 20, 15, 0))
            db.session.commit()
            voucher_id = voucher.id
        switch_on(merchant, "voucher_expiry", datetime(2026, 8, 1), days_before=3)
        for day in range(10, 21):
            engine.run(now=datetime(2026, 8, day, 12, 0))
        assert firings(merchant) == [(holder.id, f"expiry-{voucher_id}", date(2026, 8, 17))]


# --- welcome ---------------------------------------------------------------------------


def test_welcome_email_waits_for_the_confirmation(app):
    """Joined with email pending: nothing; confirmed: the welcome with its voucher; a
    wallet opt-in later gets the same occurrence and the same voucher."""
    with app.app_context():
        merchant = gen_merchant()
        t0 = datetime(2026, 11, 1, 9, 0)
        switch_on(merchant, "welcome", t0 - timedelta(days=1), channels="both",
                  voucher_title="Welcome cookie")
        newcomer = customer(merchant, email_consent=CONSENT_PENDING, joined_at=t0)
        old = customer(merchant, joined_at=t0 - timedelta(days=3))
        engine.run(now=t0 + timedelta(minutes=15))
        assert firings(merchant) == []
        with tenant(merchant.id):
            row = db.session.get(Customer, newcomer.id)
            row.email_consent, row.email_confirmed_at = CONSENT_GRANTED, t0
            db.session.commit()
        engine.run(now=t0 + timedelta(minutes=30))
        assert [f[:2] for f in firings(merchant)] == [(newcomer.id, "welcome")]
        with tenant(merchant.id):
            db.session.get(Customer, newcomer.id).wallet_consent = CONSENT_GRANTED
            db.session.commit()
        engine.run(now=t0 + timedelta(minutes=45))
        rows = outbox_rows(merchant, "welcome")
        assert [(r[1], r[2]) for r in rows] == [("email", "welcome"), ("wallet", "welcome")]
        assert rows[0][3] == rows[1][3] is not None
        assert old.id not in {r[0] for r in rows}


# --- tag-based notification ----------------------------------------------------------------


def test_tag_notify_selects_tagged_customers_once_per_tagging(app):
    with app.app_context():
        merchant = gen_merchant()
        tagged = customer(merchant, reminders_consent=CONSENT_GRANTED)
        other = customer(merchant)
        with tenant(merchant.id):
            tag = Tag(merchant_id=merchant.id, name="spent but profile incomplete")
            db.session.add(tag)
            db.session.flush()
            db.session.add(CustomerTag(merchant_id=merchant.id, customer_id=tagged.id,
                                       tag_id=tag.id, created_at=datetime(2026, 10, 1, 8, 0)))
            db.session.commit()
            tag_id = tag.id
        switch_on(merchant, "tag_notify", datetime(2026, 10, 5), tag_id=tag_id)
        for day in range(5, 9):
            engine.run(now=datetime(2026, 10, day, 12, 0))
        assert firings(merchant) == [(tagged.id, f"tag{tag_id}-2026-10-01", date(2026, 10, 5))]
        assert other.id not in {f[0] for f in firings(merchant)}


def test_tag_notify_needs_a_tag_before_switching_on(app):
    with app.app_context():
        merchant = gen_merchant()
        with pytest.raises(manage.AutomationError) as error:
            manage.set_enabled(merchant.id, "tag_notify", True)
        assert "tag_id" in error.value.errors


# --- engine housekeeping -------------------------------------------------------------------


def test_dry_run_writes_nothing(app):
    with app.app_context():
        merchant = gen_merchant()
        hal = customer(merchant, birthday_month=5, birthday_day=5)
        switch_on(merchant, "birthday", datetime(2026, 5, 1))
        [run] = engine.run(merchant.id, now=datetime(2026, 5, 2, 12, 0), dry_run=True)
        assert [(f.customer_id, f.occurrence) for f in run.firings] == [
            (hal.id, "birthday-2026")]
        assert firings(merchant) == [] and outbox_rows(merchant, "birthday") == []
        with tenant(merchant.id):
            flow = db.session.scalar(select(AutomationFlow).filter_by(kind="birthday"))
            assert flow.last_evaluated_local_date == date(2026, 4, 30)


def test_switched_off_flow_does_nothing_and_skips_waiting_messages(app):
    with app.app_context():
        merchant = gen_merchant()
        customer(merchant, birthday_month=5, birthday_day=5)
        switch_on(merchant, "birthday", datetime(2026, 5, 1))
        engine.run(now=datetime(2026, 5, 2, 12, 0))
        manage.set_enabled(merchant.id, "birthday", False)
        flow = manage.get_flow(merchant.id, "birthday")
        with tenant(merchant.id):
            assert db.session.get(Campaign, flow.campaign_id).status == "paused"
            assert {m.skip_reason for m in db.session.scalars(select(Message))} == {"cancelled"}
        assert engine.run(now=datetime(2026, 5, 3, 12, 0)) == []


def test_preview_lists_the_next_seven_days(app):
    with app.app_context():
        merchant = gen_merchant()
        soon = customer(merchant, birthday_month=5, birthday_day=9)
        customer(merchant, birthday_month=6, birthday_day=30)
        manage.ensure_flows(merchant.id)
        total, rows = engine.preview(merchant.id, "birthday", now=datetime(2026, 5, 1, 12, 0))
        assert total == 1
        assert (rows[0].customer_id, rows[0].local_date) == (soon.id, date(2026, 5, 6))


def test_one_merchant_never_fires_for_another(app):
    with app.app_context():
        mine, theirs = gen_merchant(), gen_merchant()
        customer(theirs, birthday_month=5, birthday_day=5)
        switch_on(mine, "birthday", datetime(2026, 5, 1))
        engine.run(now=datetime(2026, 5, 2, 12, 0))
        assert firings(mine) == [] and firings(theirs) == []
