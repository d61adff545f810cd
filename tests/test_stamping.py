"""Stamping, undo, vouchers and badges: the rules, tested without HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from stampweb import events
from stampweb.extensions import db
from stampweb.loyalty import badges, stamping, vouchers
from stampweb.loyalty.stamping import StampRefused
from stampweb.loyalty.vouchers import VoucherRefused
from stampweb.models import (
    REWARD_STATE_BIRTHDAY,
    REWARD_STATE_NONE,
    VISIT_REVERSAL,
    AuditLog,
    Card,
    Customer,
    Merchant,
    Program,
    Visit,
    Voucher,
)
from stampweb.tenancy import tenant

from .factories import card_of, gen_customer, gen_merchant, gen_user

T0 = datetime(2026, 3, 10, 12, 0, 0)  # naive UTC, like every stored time


@pytest.fixture
def shop(app):
    """A merchant with a 5-stamp program, a staff user and one customer's card."""
    with app.app_context():
        merchant = gen_merchant()
        staff = gen_user(merchant, "staff")
        customer = gen_customer(merchant)
        with tenant(merchant.id):
            program = db.session.scalar(select(Program))
            program.stamps_required = 5
            program.reward_text = "Free flat white"
            program.voucher_validity_days = 30
            db.session.commit()
        card = card_of(customer)
        yield {"merchant_id": merchant.id, "staff_id": staff.id,
               "customer_id": customer.id, "card_id": card.id}


def _stamp(shop, **kwargs):
    kwargs.setdefault("staff_user_id", shop["staff_id"])
    kwargs.setdefault("device", "pytest-phone")
    return stamping.record_stamps(shop["merchant_id"], shop["card_id"], **kwargs)


def _program(shop, **changes):
    with tenant(shop["merchant_id"]):
        program = db.session.scalar(select(Program))
        for key, value in changes.items():
            setattr(program, key, value)
        db.session.commit()


def _merchant(shop) -> Merchant:
    return db.session.get(Merchant, shop["merchant_id"])


def _card(shop) -> Card:
    with tenant(shop["merchant_id"]):
        return db.session.get(Card, shop["card_id"], populate_existing=True)


def _customer(shop) -> Customer:
    with tenant(shop["merchant_id"]):
        return db.session.get(Customer, shop["customer_id"], populate_existing=True)


def _visits(shop) -> list[Visit]:
    with tenant(shop["merchant_id"]):
        return list(db.session.scalars(select(Visit).order_by(Visit.id)))


def _vouchers(shop) -> list[Voucher]:
    with tenant(shop["merchant_id"]):
        return list(
            db.session.scalars(select(Voucher).order_by(Voucher.id).execution_options(
                populate_existing=True))
        )


def test_a_stamp_adds_to_the_card_and_records_who_where_and_when(shop):
    """One stamp: balance +1, ledger row with staff, device and time; counters updated."""
    result = _stamp(shop, amount=Decimal("4.50"), now=T0)
    assert (result.stamps, result.stamps_required, result.voucher_ids) == (1, 5, ())
    [visit] = _visits(shop)
    assert visit.id == result.visit_id
    assert (visit.stamps, visit.amount, visit.staff_user_id, visit.device, visit.created_at) == (
        1, Decimal("4.50"), shop["staff_id"], "pytest-phone", T0)
    customer = _customer(shop)
    assert (customer.visit_count, customer.total_spent, customer.last_visit_at) == (
        1, Decimal("4.50"), T0)
    assert _card(shop).last_stamp_at == T0


def test_every_stamp_is_in_the_audit_log(shop):
    """The audit log names the staff user, the time and the action's subject."""
    result = _stamp(shop, now=T0)
    with tenant(shop["merchant_id"]):
        entry = db.session.scalar(select(AuditLog).filter_by(action="stamp"))
    assert (entry.user_id, entry.subject_id, entry.created_at) == (
        shop["staff_id"], result.visit_id, T0)
    assert entry.detail["device"] == "pytest-phone"


def test_reward_is_issued_at_exactly_stamps_required_and_the_card_restarts(shop):
    """The 5th stamp on a 5-stamp card issues one reward voucher and resets the balance."""
    for minute in range(4):
        assert _stamp(shop, now=T0 + timedelta(minutes=10 * minute)).voucher_ids == ()
    result = _stamp(shop, now=T0 + timedelta(hours=1))
    assert result.stamps == 0
    [voucher] = _vouchers(shop)
    assert result.voucher_ids == (voucher.id,)
    assert voucher.kind == "reward" and voucher.title == "Free flat white"
    assert voucher.visit_id == result.visit_id
    assert voucher.expires_at == T0 + timedelta(hours=1, days=30)
    assert _card(shop).rewards_earned == 1


def test_several_stamps_at_once_can_issue_several_rewards(shop):
    """12 stamps on a 5-stamp card: two rewards, 2 stamps left over."""
    result = _stamp(shop, stamps=12, now=T0)
    assert len(result.voucher_ids) == 2
    assert result.stamps == 2
    assert len(_vouchers(shop)) == 2


def test_reward_and_card_events_are_sent_after_commit(shop):
    """card_changed, visit_recorded and reward_issued announce the stamp."""
    seen = []

    def listener(_sender, **payload):
        seen.append(payload)

    signals = (events.card_changed, events.visit_recorded, events.reward_issued)
    for signal in signals:
        signal.connect(listener)
    try:
        result = _stamp(shop, stamps=5, now=T0)
    finally:
        for signal in signals:
            signal.disconnect(listener)
    merchant_id = shop["merchant_id"]
    assert {"merchant_id": merchant_id, "card_id": shop["card_id"]} in seen
    assert {"merchant_id": merchant_id, "visit_id": result.visit_id} in seen
    assert {"merchant_id": merchant_id, "voucher_id": result.voucher_ids[0]} in seen


def test_cooldown_refuses_a_second_stamp_with_a_clear_message(shop):
    """Within the 5-minute cooldown a second stamp is refused and nothing is written."""
    _stamp(shop, now=T0)
    with pytest.raises(StampRefused) as refused:
        _stamp(shop, now=T0 + timedelta(minutes=2))
    assert refused.value.reason_code == "cooldown"
    assert refused.value.message == (
        "Already stamped 2 minutes ago — next stamp possible in 3 minutes."
    )
    assert len(_visits(shop)) == 1
    assert _stamp(shop, now=T0 + timedelta(minutes=5)).stamps == 2


def test_daily_cap_counts_stamps_in_the_merchants_day(shop):
    """A cap of 2 per day: the third is refused until local midnight, then allowed again.

    The merchant is in Pacific/Kiritimati (UTC+14): local midnight is 10:00 UTC.
    """
    with tenant(shop["merchant_id"]):
        db.session.execute(
            db.text("UPDATE merchant SET timezone = 'Pacific/Kiritimati' WHERE id = :id"),
            {"id": shop["merchant_id"]},
        )
        db.session.commit()
    _program(shop, daily_stamp_cap=2, stamp_cooldown_minutes=0)
    before_midnight = datetime(2026, 3, 10, 9, 0)  # 23:00 local
    _stamp(shop, now=before_midnight)
    _stamp(shop, now=before_midnight + timedelta(minutes=30))
    with pytest.raises(StampRefused) as refused:
        _stamp(shop, now=before_midnight + timedelta(minutes=59))  # 23:59 local
    assert refused.value.reason_code == "daily_cap"
    # 00:01 local on the next day: a new day, although it is the same UTC date.
    assert _stamp(shop, now=datetime(2026, 3, 10, 10, 1)).stamps == 3
    with pytest.raises(StampRefused):
        _stamp(shop, stamps=2, now=datetime(2026, 3, 10, 10, 2))


def test_daily_cap_boundary_in_a_timezone_behind_utc(shop):
    """America/Adak (UTC-10 in winter): 09:30 UTC is still the previous local day."""
    with tenant(shop["merchant_id"]):
        db.session.execute(
            db.text("UPDATE merchant SET timezone = 'America/Adak' WHERE id = :id"),
            {"id": shop["merchant_id"]},
        )
        db.session.commit()
    _program(shop, daily_stamp_cap=1, stamp_cooldown_minutes=0)
    _stamp(shop, now=datetime(2026, 1, 10, 9, 0))  # 23:00 on Jan 9 local
    with pytest.raises(StampRefused):
        _stamp(shop, now=datetime(2026, 1, 10, 9, 55))  # 23:55 on Jan 9
    assert _stamp(shop, now=datetime(2026, 1, 10, 10, 5)).stamps == 2  # 00:05 on Jan 10


def test_undone_stamps_do_not_count_toward_the_daily_cap(shop):
    """A stamp given by mistake and undone leaves today's allowance untouched."""
    _program(shop, daily_stamp_cap=1, stamp_cooldown_minutes=0)
    first = _stamp(shop, now=T0)
    stamping.undo_stamp(shop["merchant_id"], first.visit_id, staff_user_id=shop["staff_id"],
                        now=T0 + timedelta(minutes=1))
    assert _stamp(shop, now=T0 + timedelta(minutes=2)).stamps == 1


def test_replayed_request_key_gives_the_same_answer_and_no_new_row(shop):
    """The same form submitted twice (same request key) records one visit."""
    first = _stamp(shop, request_key="form-key-0001", now=T0)
    again = _stamp(shop, request_key="form-key-0001", now=T0 + timedelta(seconds=3))
    assert again.replayed and not first.replayed
    assert (again.visit_id, again.stamps, again.voucher_ids) == (
        first.visit_id, first.stamps, first.voucher_ids)
    assert len(_visits(shop)) == 1


def test_replay_after_the_cooldown_still_writes_nothing(shop):
    """A replay is recognised even when a fresh stamp would be allowed."""
    first = _stamp(shop, stamps=5, request_key="form-key-0002", now=T0)
    again = _stamp(shop, stamps=5, request_key="form-key-0002", now=T0 + timedelta(hours=2))
    assert again.voucher_ids == first.voucher_ids
    assert len(_visits(shop)) == 1 and len(_vouchers(shop)) == 1


def test_replay_is_recognised_when_the_program_has_no_cooldown(shop):
    """With the cooldown off, the unique request key alone stops the second row."""
    _program(shop, stamp_cooldown_minutes=0)
    first = _stamp(shop, request_key="form-key-0003", now=T0)
    again = _stamp(shop, request_key="form-key-0003", now=T0 + timedelta(seconds=1))
    assert again.replayed and again.visit_id == first.visit_id
    assert len(_visits(shop)) == 1 and _card(shop).stamps == 1


def test_a_request_key_used_on_another_card_is_refused(shop):
    """A key belongs to one stamping: reusing it for another card writes nothing."""
    other = card_of(gen_customer(_merchant(shop)))
    _stamp(shop, request_key="form-key-0004", now=T0)
    with pytest.raises(StampRefused) as refused:
        stamping.record_stamps(shop["merchant_id"], other.id, request_key="form-key-0004",
                               now=T0)
    assert refused.value.reason_code == "bad_request_key"
    assert len(_visits(shop)) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"stamps": 0}, "bad_count"),
        ({"stamps": 21}, "bad_count"),
        ({"stamps": -1}, "bad_count"),
        ({"amount": Decimal("-1")}, "bad_amount"),
        ({"amount": "abc"}, "bad_amount"),
    ],
)
def test_bad_stamp_count_or_amount_is_refused(shop, kwargs, reason):
    """Stamps must be 1–20 and the amount a non-negative number; nothing is written."""
    with pytest.raises(StampRefused) as refused:
        _stamp(shop, now=T0, **kwargs)
    assert refused.value.reason_code == reason
    assert _visits(shop) == []


def test_another_merchants_card_cannot_be_stamped(shop, app):
    """A card id of merchant B, stamped as merchant A, is not found."""
    other = gen_merchant()
    other_card = card_of(gen_customer(other))
    with pytest.raises(StampRefused) as refused:
        stamping.record_stamps(shop["merchant_id"], other_card.id, now=T0)
    assert refused.value.reason_code == "not_found"


def test_undo_writes_a_compensating_row_and_restores_counters(shop):
    """Undo: a reversal row (-stamps, reverses_id, staff, device); counters as before."""
    first = _stamp(shop, amount=Decimal("3.00"), now=T0)
    second = _stamp(shop, amount=Decimal("5.00"), now=T0 + timedelta(minutes=20))
    result = stamping.undo_stamp(
        shop["merchant_id"], second.visit_id, staff_user_id=shop["staff_id"],
        device="pytest-phone", reason="wrong card", now=T0 + timedelta(minutes=25),
    )
    reversal = _visits(shop)[-1]
    assert (reversal.kind, reversal.stamps, reversal.reverses_id) == (
        VISIT_REVERSAL, -1, second.visit_id)
    assert (reversal.staff_user_id, reversal.device, reversal.reason, reversal.created_at) == (
        shop["staff_id"], "pytest-phone", "wrong card", T0 + timedelta(minutes=25))
    assert result.stamps == 1 == _card(shop).stamps
    customer = _customer(shop)
    assert (customer.visit_count, customer.total_spent, customer.last_visit_at) == (
        1, Decimal("3.00"), T0)
    assert _card(shop).last_stamp_at == T0
    with tenant(shop["merchant_id"]):
        assert db.session.scalar(select(func.count(AuditLog.id)).filter_by(
            action="stamp.undo")) == 1
    assert first.visit_id != second.visit_id


def test_undo_lifts_the_cooldown_for_a_corrected_stamp(shop):
    """After undoing a mistaken stamp, the right card can be stamped at once."""
    first = _stamp(shop, now=T0)
    stamping.undo_stamp(shop["merchant_id"], first.visit_id, staff_user_id=shop["staff_id"],
                        now=T0 + timedelta(minutes=1))
    assert _stamp(shop, now=T0 + timedelta(minutes=2)).stamps == 1


def test_undo_is_refused_after_ten_minutes(shop):
    """The undo window is 10 minutes."""
    first = _stamp(shop, now=T0)
    with pytest.raises(StampRefused) as refused:
        stamping.undo_stamp(shop["merchant_id"], first.visit_id, staff_user_id=shop["staff_id"],
                            now=T0 + timedelta(minutes=10, seconds=1))
    assert refused.value.reason_code == "too_late"
    later = T0 + timedelta(minutes=11)
    assert stamping.undoable_visit(shop["merchant_id"], shop["card_id"], later) is None


def test_only_the_latest_stamp_can_be_undone_and_only_once(shop):
    """An older stamp cannot be undone; undoing twice is refused."""
    _program(shop, stamp_cooldown_minutes=0)
    first = _stamp(shop, now=T0)
    second = _stamp(shop, now=T0 + timedelta(minutes=1))
    with pytest.raises(StampRefused) as refused:
        stamping.undo_stamp(shop["merchant_id"], first.visit_id, staff_user_id=shop["staff_id"],
                            now=T0 + timedelta(minutes=2))
    assert refused.value.reason_code == "not_latest"
    stamping.undo_stamp(shop["merchant_id"], second.visit_id, staff_user_id=shop["staff_id"],
                        now=T0 + timedelta(minutes=2))
    with pytest.raises(StampRefused) as refused:
        stamping.undo_stamp(shop["merchant_id"], second.visit_id, staff_user_id=shop["staff_id"],
                            now=T0 + timedelta(minutes=3))
    assert refused.value.reason_code == "already_undone"


def test_undoing_the_stamp_that_filled_the_card_voids_its_reward(shop):
    """The reward voucher is voided and the card shows its stamps again."""
    _stamp(shop, stamps=4, now=T0)
    filling = _stamp(shop, now=T0 + timedelta(minutes=30))
    assert _card(shop).stamps == 0
    result = stamping.undo_stamp(shop["merchant_id"], filling.visit_id,
                                 staff_user_id=shop["staff_id"],
                                 now=T0 + timedelta(minutes=31))
    assert result.voided_voucher_ids == filling.voucher_ids
    assert [v.status for v in _vouchers(shop)] == ["void"]
    card = _card(shop)
    assert (card.stamps, card.rewards_earned) == (4, 0)


def test_undo_is_refused_when_its_reward_was_already_redeemed(shop):
    """A redeemed reward cannot be taken back, so its stamp cannot be undone."""
    filling = _stamp(shop, stamps=5, now=T0)
    vouchers.redeem(shop["merchant_id"], filling.voucher_ids[0], staff_user_id=shop["staff_id"],
                    now=T0 + timedelta(minutes=1))
    with pytest.raises(StampRefused) as refused:
        stamping.undo_stamp(shop["merchant_id"], filling.visit_id,
                            staff_user_id=shop["staff_id"], now=T0 + timedelta(minutes=2))
    assert refused.value.reason_code == "reward_redeemed"
    assert "already redeemed" in refused.value.message
    assert len(_visits(shop)) == 1


def test_redeem_marks_the_voucher_and_a_second_redeem_fails(shop):
    """Redeem records when, by whom; the second attempt is refused."""
    filling = _stamp(shop, stamps=5, now=T0)
    voucher_id = filling.voucher_ids[0]
    vouchers.redeem(shop["merchant_id"], voucher_id, staff_user_id=shop["staff_id"],
                    now=T0 + timedelta(hours=1))
    [voucher] = _vouchers(shop)
    assert (voucher.status, voucher.redeemed_at, voucher.redeemed_by_user_id) == (
        "redeemed", T0 + timedelta(hours=1), shop["staff_id"])
    with pytest.raises(VoucherRefused) as refused:
        vouchers.redeem(shop["merchant_id"], voucher_id, staff_user_id=shop["staff_id"],
                        now=T0 + timedelta(hours=2))
    assert refused.value.reason_code == "already_redeemed"
    with tenant(shop["merchant_id"]):
        assert db.session.scalar(select(func.count(AuditLog.id)).filter_by(
            action="voucher.redeem")) == 1


def test_expired_voucher_is_refused(shop):
    """A voucher past its expiry cannot be redeemed."""
    filling = _stamp(shop, stamps=5, now=T0)
    with pytest.raises(VoucherRefused) as refused:
        vouchers.redeem(shop["merchant_id"], filling.voucher_ids[0],
                        staff_user_id=shop["staff_id"], now=T0 + timedelta(days=31))
    assert refused.value.reason_code == "expired"
    assert _vouchers(shop)[0].status == "active"


def test_redeeming_a_birthday_voucher_clears_the_birthday_state(shop):
    """A birthday voucher redeemed: the card no longer says a gift is due."""
    with tenant(shop["merchant_id"]):
        db.session.get(Card, shop["card_id"]).reward_state = REWARD_STATE_BIRTHDAY
        voucher = vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="birthday",
                                 title="Cake", valid_days=14, card_id=shop["card_id"],
                                 origin={"occurrence": "birthday-2026"}, now=T0)
        db.session.commit()
        voucher_id = voucher.id
    vouchers.redeem(shop["merchant_id"], voucher_id, staff_user_id=shop["staff_id"],
                    now=T0 + timedelta(days=1))
    assert _card(shop).reward_state == REWARD_STATE_NONE


def test_a_birthday_gift_due_on_the_card_is_given_once(shop):
    """Without a voucher, giving the gift clears the card's state; a second time fails."""
    with tenant(shop["merchant_id"]):
        db.session.get(Card, shop["card_id"]).reward_state = REWARD_STATE_BIRTHDAY
        db.session.commit()
    vouchers.give_birthday_gift(shop["merchant_id"], shop["card_id"],
                                staff_user_id=shop["staff_id"], now=T0)
    assert _card(shop).reward_state == REWARD_STATE_NONE
    with pytest.raises(VoucherRefused):
        vouchers.give_birthday_gift(shop["merchant_id"], shop["card_id"],
                                    staff_user_id=shop["staff_id"], now=T0)


def test_issue_sets_expiry_from_days_or_date(shop):
    """vouchers.issue: valid_days after issue, or the given expires_at, or no expiry."""
    with tenant(shop["merchant_id"]):
        by_days = vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="campaign",
                                 title="10% off", valid_days=7, origin={"campaign_id": 3},
                                 now=T0)
        by_date = vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="winback",
                                 title="Come back", expires_at=T0 + timedelta(days=2), now=T0)
        forever = vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="manual",
                                 title="Sorry", now=T0)
        db.session.commit()
        assert by_days.expires_at == T0 + timedelta(days=7)
        assert by_days.origin == {"campaign_id": 3}
        assert by_date.expires_at == T0 + timedelta(days=2)
        assert forever.expires_at is None
        with pytest.raises(ValueError):
            vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="bogus", title="x")


def test_badges_show_birthday_reward_ready_and_expiring(shop):
    """Badges: birthday gift due, reward ready, a voucher expiring within 7 days."""
    assert badges.for_card(_card(shop), T0) == []
    _stamp(shop, stamps=5, now=T0)
    with tenant(shop["merchant_id"]):
        card = db.session.get(Card, shop["card_id"])
        card.reward_state = REWARD_STATE_BIRTHDAY
        db.session.commit()
        kinds = [b.kind for b in badges.for_card(card, T0)]
        assert kinds == ["birthday", "reward"]
        # 25 days later the 30-day reward expires within a week.
        kinds = [b.kind for b in badges.for_card(card, T0 + timedelta(days=25))]
        assert kinds == ["birthday", "reward", "expiring"]
        # After expiry it is neither ready nor expiring.
        card.reward_state = REWARD_STATE_NONE
        db.session.commit()
        assert badges.for_card(card, T0 + timedelta(days=31)) == []


def test_find_cards_by_phone_email_name_and_code(shop):
    """Search finds a card by phone digits, email prefix, first or last name, code."""
    merchant_id = shop["merchant_id"]
    with tenant(merchant_id):
        customer = db.session.get(Customer, shop["customer_id"])
        customer.first_name, customer.last_name = "Zoe", "Quartermaine"
        customer.search_name = "zoe quartermaine"
        customer.phone = "+15551234567"
        customer.email = "zoe.q@example.com"
        db.session.commit()
    code = _card(shop).code
    for query in ("4567", "555 123", "zoe.q@", "Zoe", "quarter", code.lower(), code[:4]):
        found = stamping.find_cards(merchant_id, query)
        assert [c.id for c in found] == [shop["card_id"]], query
    assert stamping.find_cards(merchant_id, "nobody") == []
    assert stamping.find_cards(merchant_id, "%") == []


@pytest.mark.parametrize(
    ("typed", "amount"),
    [("4.50", "4.50"), ("4,5", "4.50"), ("۴٫۵۰", "4.50"), ("٤٫٥", "4.50"), (" 12 ", "12.00")],
)
def test_amounts_typed_on_any_keyboard_are_read(typed, amount):
    """A Persian phone types ۴٫۵۰ (Extended Arabic-Indic digits, U+066B separator)."""
    assert stamping.parse_amount(typed) == Decimal(amount)
