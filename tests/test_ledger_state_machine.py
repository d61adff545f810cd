"""A Hypothesis state machine over the real loyalty services: stamps (with amounts,
replayed request keys, cooldown and daily cap), undos, reward vouchers and their
redemption, with time moved forward by the machine.

After every step the database must agree with itself and with a small model:
- the card's balance plus the stamps spent on rewards equals the sum of the
  ledger (stamps and compensating reversal rows), and is never negative;
- a reward voucher exists (not void) exactly once per full card:
  floor(ledger sum / stamps per reward), which is also `rewards_earned`;
- the customer's visit count and spend equal what the ledger says;
- each service answer (stamped, replayed, refused and why) is the one the rules
  predict, and a refusal or a replay writes no row.

Runs on SQLite and on a real PostgreSQL; each example gets its own merchant.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from stampweb.extensions import db
from stampweb.loyalty import stamping, vouchers
from stampweb.loyalty.stamping import UNDO_WINDOW, StampRefused
from stampweb.loyalty.vouchers import VoucherRefused
from stampweb.models import Card, Customer, Program, Visit, Voucher
from stampweb.tenancy import tenant

from .factories import card_of, gen_customer, gen_merchant, gen_user

STAMPS_REQUIRED = 4
COOLDOWN = timedelta(minutes=5)
DAILY_CAP = 7
VALID_DAYS = 2
T0 = datetime(2026, 3, 2, 7, 0)
_keys = itertools.count(1)


@dataclass
class ModelVisit:
    id: int
    stamps: int
    amount: Decimal
    at: datetime
    key: str
    voucher_ids: tuple[int, ...]
    reversed: bool = False


@dataclass
class ModelVoucher:
    id: int
    issued_at: datetime
    status: str = "active"  # active, redeemed, void


@dataclass
class Model:
    visits: list[ModelVisit] = field(default_factory=list)
    vouchers: dict[int, ModelVoucher] = field(default_factory=dict)
    ledger_rows: int = 0

    def live(self) -> list[ModelVisit]:
        return [v for v in self.visits if not v.reversed]

    def latest(self) -> ModelVisit | None:
        live = self.live()
        return live[-1] if live else None

    def stamped_today(self, now: datetime) -> int:
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)  # merchant in UTC
        return sum(v.stamps for v in self.live() if v.at >= day_start)

    def ledger_sum(self) -> int:
        return sum(v.stamps for v in self.live())


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, app):
        super().__init__()
        self.app = app
        self.model = Model()
        self.now = T0

    @initialize()
    def a_fresh_card(self):
        with self.app.app_context():
            merchant = gen_merchant()
            staff = gen_user(merchant, "staff")
            customer = gen_customer(merchant)
            with tenant(merchant.id):
                program = db.session.scalar(select(Program))
                program.stamps_required = STAMPS_REQUIRED
                program.stamp_cooldown_minutes = int(COOLDOWN.total_seconds() // 60)
                program.daily_stamp_cap = DAILY_CAP
                program.voucher_validity_days = VALID_DAYS
                db.session.commit()
            self.merchant_id, self.staff_id = merchant.id, staff.id
            self.customer_id, self.card_id = customer.id, card_of(customer).id

    # --- time ------------------------------------------------------------------

    @rule(minutes=st.sampled_from([1, 4, 6, 11, 90, 24 * 60, 2 * 24 * 60]))
    def time_passes(self, minutes):
        self.now += timedelta(minutes=minutes)

    @rule()
    def the_next_day(self):
        # A rule of its own, so that days pass as often as minutes: vouchers
        # expire and the daily cap starts again.
        self.now += timedelta(days=1)

    # --- stamping --------------------------------------------------------------

    def _stamp(self, stamps, amount, key):
        with self.app.app_context():
            return stamping.record_stamps(
                self.merchant_id, self.card_id, stamps=stamps, amount=amount,
                staff_user_id=self.staff_id, request_key=key, device="machine", now=self.now,
            )

    @rule(stamps=st.integers(min_value=1, max_value=6),
          cents=st.integers(min_value=0, max_value=5000))
    def stamp(self, stamps, cents):
        model = self.model
        amount = Decimal(cents) / 100
        key = f"machine-{next(_keys):08d}"
        last = model.latest()
        refusal = None
        if last is not None and self.now - last.at < COOLDOWN:
            refusal = "cooldown"
        elif model.stamped_today(self.now) + stamps > DAILY_CAP:
            refusal = "daily_cap"
        try:
            result = self._stamp(stamps, amount, key)
        except StampRefused as exc:
            assert exc.reason_code == refusal, (exc.reason_code, refusal)
            return
        assert refusal is None, f"expected a {refusal} refusal, got {result}"
        assert not result.replayed
        total_before = model.ledger_sum()
        full_cards = (total_before + stamps) // STAMPS_REQUIRED - total_before // STAMPS_REQUIRED
        assert len(result.voucher_ids) == full_cards
        assert result.stamps == (total_before + stamps) % STAMPS_REQUIRED
        model.visits.append(ModelVisit(result.visit_id, stamps, amount, self.now, key,
                                       result.voucher_ids))
        model.ledger_rows += 1
        for voucher_id in result.voucher_ids:
            model.vouchers[voucher_id] = ModelVoucher(voucher_id, self.now)

    @precondition(lambda self: self.model.visits)
    @rule(data=st.data())
    def replay_a_stamp_form(self, data):
        """The same request key again, at any later time: same visit, no new row."""
        visit = data.draw(st.sampled_from(self.model.visits))
        result = self._stamp(visit.stamps, visit.amount, visit.key)
        assert result.replayed
        assert result.visit_id == visit.id
        assert result.voucher_ids == visit.voucher_ids

    # --- undo ------------------------------------------------------------------

    def _undo(self, visit_id):
        with self.app.app_context():
            return stamping.undo_stamp(
                self.merchant_id, visit_id, staff_user_id=self.staff_id,
                card_id=self.card_id, reason="machine", now=self.now,
            )

    @precondition(lambda self: self.model.latest() is not None)
    @rule()
    def undo_the_latest_stamp(self):
        model = self.model
        visit = model.latest()
        if self.now - visit.at > UNDO_WINDOW:
            expected = "too_late"
        elif any(model.vouchers[v].status == "redeemed" for v in visit.voucher_ids):
            expected = "reward_redeemed"
        else:
            expected = None
        try:
            result = self._undo(visit.id)
        except StampRefused as exc:
            assert exc.reason_code == expected, (exc.reason_code, expected)
            return
        assert expected is None, f"expected {expected}, the undo went through"
        assert set(result.voided_voucher_ids) == {
            v for v in visit.voucher_ids if model.vouchers[v].status == "active"
        }
        visit.reversed = True
        model.ledger_rows += 1
        for voucher_id in result.voided_voucher_ids:
            model.vouchers[voucher_id].status = "void"

    @precondition(lambda self: len(self.model.visits) >= 2)
    @rule(data=st.data())
    def undo_an_older_or_undone_stamp(self, data):
        """Only the latest live stamp can be undone, and only once."""
        latest = self.model.latest()
        others = [v for v in self.model.visits if v is not latest]
        visit = data.draw(st.sampled_from(others))
        try:
            self._undo(visit.id)
        except StampRefused as exc:
            expected = "already_undone" if visit.reversed else "not_latest"
            assert exc.reason_code == expected
        else:
            raise AssertionError("an older or undone stamp was undone")

    # --- vouchers --------------------------------------------------------------

    @precondition(lambda self: self.model.vouchers)
    @rule(data=st.data())
    def redeem_a_voucher(self, data):
        voucher = data.draw(st.sampled_from(sorted(self.model.vouchers.values(),
                                                   key=lambda v: v.id)))
        expired = self.now >= voucher.issued_at + timedelta(days=VALID_DAYS)
        expected = {"redeemed": "already_redeemed", "void": "void"}.get(voucher.status)
        if expected is None and expired:
            expected = "expired"
        try:
            with self.app.app_context():
                vouchers.redeem(self.merchant_id, voucher.id, staff_user_id=self.staff_id,
                                now=self.now)
        except VoucherRefused as exc:
            assert exc.reason_code == expected, (exc.reason_code, expected)
            return
        assert expected is None, f"expected {expected}, the voucher was redeemed"
        voucher.status = "redeemed"

    # --- what must always hold -------------------------------------------------

    @invariant()
    def the_balance_is_the_ledger_and_rewards_match_full_cards(self):
        if not hasattr(self, "card_id"):
            return
        with self.app.app_context(), tenant(self.merchant_id):
            card = db.session.get(Card, self.card_id)
            ledger_sum = db.session.scalar(
                select(func.coalesce(func.sum(Visit.stamps), 0)).where(
                    Visit.card_id == self.card_id)
            )
            rows = db.session.scalar(
                select(func.count(Visit.id)).where(Visit.card_id == self.card_id))
            statuses = dict(db.session.execute(
                select(Voucher.id, Voucher.status).where(
                    Voucher.card_id == self.card_id, Voucher.kind == "reward")
            ).all())
            customer = db.session.get(Customer, self.customer_id)
            spent = db.session.scalar(
                select(func.coalesce(func.sum(Visit.amount), 0)).where(
                    Visit.card_id == self.card_id)
            )

            assert 0 <= card.stamps < STAMPS_REQUIRED
            assert ledger_sum >= 0
            assert card.stamps + STAMPS_REQUIRED * card.rewards_earned == ledger_sum
            issued = sum(status != "void" for status in statuses.values())
            assert issued == card.rewards_earned == ledger_sum // STAMPS_REQUIRED

            model = self.model
            assert ledger_sum == model.ledger_sum()
            assert rows == model.ledger_rows
            assert statuses == {v.id: v.status for v in model.vouchers.values()}
            assert customer.visit_count == len(model.live())
            assert customer.total_spent == spent == sum(v.amount for v in model.live())


@pytest.mark.parametrize("engine", [
    pytest.param("app", id="sqlite"),
    pytest.param("pg_app", id="postgresql", marks=pytest.mark.integration),
])
def test_the_ledger_keeps_its_invariants(request, engine):
    """Random sequences of stamps, replays, undos, redemptions and time passing."""
    application = request.getfixturevalue(engine)
    run_state_machine_as_test(
        lambda: LedgerMachine(application),
        settings=settings(
            # Fewer on PostgreSQL: the same rules, where each step costs more.
            max_examples=40 if engine == "app" else 15, stateful_step_count=25,
            deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
        ),
    )
