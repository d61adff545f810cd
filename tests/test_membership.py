"""Membership services: joining, consent, double opt-in, unsubscribe, export, deletion."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from stampweb import events
from stampweb.extensions import db
from stampweb.loyalty import membership
from stampweb.loyalty.membership import MembershipError
from stampweb.messaging.transactional import deliver_confirmation_email
from stampweb.models import (
    Card,
    ConsentEvent,
    Customer,
    MailboxMessage,
    Visit,
    Voucher,
)
from stampweb.tasks.queues import TRANSACTIONAL, get_queue
from stampweb.tenancy import tenant, unscoped

from .factories import gen_merchant

WORDING = "Yes, Cafe may send me offers and news by email."


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


@pytest.fixture
def shop(ctx):
    return gen_merchant("cafe", name="Cafe")


def _join(merchant_id, **overrides):
    values = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "phone": None,
        "locale": "en",
        "email_marketing": False,
        "ip": "203.0.113.9",
        "user_agent": "TestPhone/1.0",
    }
    values.update(overrides)
    return membership.join(merchant_id, **values)


def _customer(merchant_id, customer_id) -> Customer:
    with tenant(merchant_id):
        customer = db.session.get(Customer, customer_id)
        db.session.refresh(customer)
        return customer


def _consent_events(merchant_id, customer_id=None):
    with tenant(merchant_id):
        statement = select(ConsentEvent).order_by(ConsentEvent.id)
        if customer_id is not None:
            statement = statement.filter_by(customer_id=customer_id)
        return db.session.scalars(statement).all()


def _transactional_jobs():
    return get_queue(TRANSACTIONAL).jobs


# --- joining ---------------------------------------------------------------------------


def test_join_creates_customer_with_card_and_normalised_contacts(shop):
    """A new member gets a customer row (email lower-case, phone compact) and one card."""
    result = _join(shop.id, email="  Ada@Example.COM ", phone="+44 (20) 7946-0958")
    assert result.created and not result.confirmation_needed
    customer = _customer(shop.id, result.customer_id)
    assert customer.email == "ada@example.com"
    assert customer.phone == "+442079460958"
    assert customer.search_name == "ada lovelace"
    with tenant(shop.id):
        card = db.session.scalars(select(Card).filter_by(customer_id=customer.id)).one()
    assert card.token == result.card_token


def test_joining_again_with_the_same_email_finds_the_existing_card(shop):
    """Same email (any case) → same customer and card, no duplicate, profile untouched."""
    first = _join(shop.id)
    again = _join(shop.id, first_name="Someone", email="ADA@example.com")
    assert not again.created
    assert (again.customer_id, again.card_token) == (first.customer_id, first.card_token)
    assert _customer(shop.id, first.customer_id).first_name == "Ada"
    with tenant(shop.id):
        assert db.session.query(Customer).count() == 1


def test_joining_again_with_the_same_phone_finds_the_existing_card(shop):
    """Same phone number typed differently → same customer."""
    first = _join(shop.id, email=None, phone="0044 20 7946 0958")
    again = _join(shop.id, email=None, phone="+44-20-7946-0958")
    assert again.customer_id == first.customer_id and not again.created


def test_same_email_at_another_merchant_is_a_different_member(shop):
    """Membership is per merchant: another shop's member is not found."""
    other = gen_merchant("bakery")
    first = _join(shop.id)
    elsewhere = _join(other.id)
    assert elsewhere.created and elsewhere.customer_id != first.customer_id


def test_join_announces_the_new_member(shop):
    """events.customer_joined is sent once for a new member, not for a re-join."""
    seen = []

    def receiver(_sender, **payload):
        seen.append(payload)

    events.customer_joined.connect(receiver)
    try:
        result = _join(shop.id)
        _join(shop.id)
    finally:
        events.customer_joined.disconnect(receiver)
    assert seen == [{"merchant_id": shop.id, "customer_id": result.customer_id}]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"first_name": "  "}, "first_name"),
        ({"first_name": "x" * 81}, "first_name"),
        ({"last_name": "a\nb"}, "last_name"),
        ({"email": None, "phone": None}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": None, "phone": "12"}, "phone"),
        ({"email": None, "phone": "+44 abc 123456"}, "phone"),
        ({"birthday_day": 31, "birthday_month": 4}, "birthday_day"),
        ({"birthday_day": 29, "birthday_month": 2, "birthday_year": 2023}, "birthday_day"),
        ({"birthday_day": 5, "birthday_month": None}, "birthday_day"),
        ({"birthday_day": 5, "birthday_month": 6, "birthday_year": 1850}, "birthday_year"),
        ({"locale": "xx"}, "locale"),
        ({"email": None, "phone": "+4420794609", "email_marketing": True}, "email"),
    ],
)
def test_bad_input_names_the_field_and_saves_nothing(shop, overrides, field):
    """Each bad value raises MembershipError for its field; no customer is created."""
    with pytest.raises(MembershipError) as caught:
        _join(shop.id, **overrides)
    assert caught.value.field == field
    with tenant(shop.id):
        assert db.session.query(Customer).count() == 0


def test_birthday_on_29_february_without_a_year_is_fine(shop):
    """29 February is a birthday; without a year it needs no leap-year check."""
    result = _join(shop.id, birthday_day=29, birthday_month=2)
    customer = _customer(shop.id, result.customer_id)
    assert (customer.birthday_day, customer.birthday_month, customer.birthday_year) == (29, 2, None)


# --- consent -------------------------------------------------------------------------------


def test_email_opt_in_with_double_opt_in_is_pending_and_sends_confirmation(shop):
    """Ticking the box gives 'pending', records who/when/where/what, enqueues the email."""
    result = _join(shop.id, email_marketing=True, wording=WORDING)
    assert result.confirmation_needed
    customer = _customer(shop.id, result.customer_id)
    assert customer.email_consent == "pending"
    assert customer.email_confirmed_at is None
    [event] = _consent_events(shop.id, result.customer_id)
    assert (event.channel, event.state, event.source) == ("email", "pending", "join")
    assert (event.ip, event.user_agent, event.wording) == ("203.0.113.9", "TestPhone/1.0", WORDING)
    assert event.created_at is not None
    jobs = _transactional_jobs()
    assert [job.func_name for job in jobs] == [
        "stampweb.tasks.transactional.send_confirmation_email"
    ]
    assert jobs[0].args == (result.customer_id,)


def test_confirming_grants_email_consent(shop):
    """confirm_email (the POST on the confirmation page) turns pending into granted."""
    result = _join(shop.id, email_marketing=True, wording=WORDING)
    assert membership.confirm_email(shop.id, result.customer_id, ip="198.51.100.1")
    customer = _customer(shop.id, result.customer_id)
    assert customer.email_consent == "granted"
    assert customer.email_confirmed_at is not None
    last = _consent_events(shop.id, result.customer_id)[-1]
    assert (last.state, last.source, last.ip) == ("granted", "confirm", "198.51.100.1")
    # Confirming twice changes nothing more.
    assert membership.confirm_email(shop.id, result.customer_id)
    assert len(_consent_events(shop.id, result.customer_id)) == 2


def test_confirm_link_after_unsubscribing_grants_nothing(shop):
    """A stale confirmation after the customer withdrew does not opt them back in."""
    result = _join(shop.id, email_marketing=True)
    membership.unsubscribe_all(shop.id, result.customer_id)
    assert not membership.confirm_email(shop.id, result.customer_id)
    assert _customer(shop.id, result.customer_id).email_consent == "withdrawn"


def test_double_opt_in_off_grants_email_consent_at_once(ctx):
    """A merchant who turned double opt-in off gets 'granted' and sends no confirmation."""
    merchant = gen_merchant("nodoi", double_opt_in=False)
    result = _join(merchant.id, email_marketing=True, wording=WORDING)
    assert not result.confirmation_needed
    assert _customer(merchant.id, result.customer_id).email_consent == "granted"
    assert [e.state for e in _consent_events(merchant.id)] == ["granted"]
    assert _transactional_jobs() == []


def test_rejoining_does_not_flood_the_inbox_with_confirmations(shop):
    """Asking again within the hour records nothing new and enqueues nothing new."""
    _join(shop.id, email_marketing=True)
    _join(shop.id, email_marketing=True)
    assert len(_transactional_jobs()) == 1
    assert len(_consent_events(shop.id)) == 1


def test_set_consent_records_staff_changes_and_rejects_unknown_sources(shop):
    """Every change goes through set_consent with its source; nonsense is refused."""
    result = _join(shop.id)
    state = membership.set_consent(
        shop.id, result.customer_id, "wallet", "granted", source="staff", ip="10.0.0.1"
    )
    assert state == "granted"
    [event] = _consent_events(shop.id, result.customer_id)
    assert (event.channel, event.source) == ("wallet", "staff")
    with pytest.raises(ValueError):
        membership.set_consent(shop.id, result.customer_id, "wallet", "none", source="guess")
    with pytest.raises(ValueError):
        membership.set_consent(shop.id, result.customer_id, "sms", "granted", source="staff")


def test_unsubscribe_all_withdraws_every_channel_once(shop):
    """All channels become withdrawn; a second call changes nothing and announces nothing."""
    result = _join(shop.id, email_marketing=True)
    membership.set_consent(shop.id, result.customer_id, "wallet", "granted", source="staff")
    seen = []

    def receiver(_sender, **payload):
        seen.append(payload)

    events.customer_unsubscribed.connect(receiver)
    try:
        assert membership.unsubscribe_all(shop.id, result.customer_id, ip="192.0.2.4")
        assert not membership.unsubscribe_all(shop.id, result.customer_id, ip="192.0.2.4")
    finally:
        events.customer_unsubscribed.disconnect(receiver)
    customer = _customer(shop.id, result.customer_id)
    assert {customer.email_consent, customer.wallet_consent, customer.reminders_consent} == {
        "withdrawn"
    }
    withdrawals = [e for e in _consent_events(shop.id) if e.state == "withdrawn"]
    assert sorted(e.channel for e in withdrawals) == ["email", "reminders", "wallet"]
    assert {e.source for e in withdrawals} == {"unsubscribe"}
    assert seen == [{"merchant_id": shop.id, "customer_id": result.customer_id}]


def test_update_preferences_saves_profile_and_consents(shop):
    """Preferences change name, birthday, language; unticking withdraws; source recorded."""
    result = _join(shop.id)
    membership.set_consent(shop.id, result.customer_id, "wallet", "granted", source="join")
    outcome = membership.update_preferences(
        shop.id,
        result.customer_id,
        first_name="Augusta",
        last_name="King",
        birthday_day=10,
        birthday_month=12,
        locale="he",
        consents={"email": True, "wallet": False, "reminders": True},
        wording={"email": "email words", "reminders": "reminder words"},
        ip="192.0.2.8",
    )
    assert outcome.confirmation_needed and outcome.unsubscribed
    customer = _customer(shop.id, result.customer_id)
    assert (customer.first_name, customer.search_name, customer.locale) == (
        "Augusta",
        "augusta king",
        "he",
    )
    assert (customer.email_consent, customer.wallet_consent, customer.reminders_consent) == (
        "pending",
        "withdrawn",
        "granted",
    )
    recent = [e for e in _consent_events(shop.id) if e.source == "preferences"]
    assert {(e.channel, e.state) for e in recent} == {
        ("email", "pending"),
        ("wallet", "withdrawn"),
        ("reminders", "granted"),
    }
    assert {e.channel: e.wording for e in recent}["reminders"] == "reminder words"


def test_update_preferences_with_bad_input_changes_nothing(shop):
    """All or nothing: a bad birthday leaves name and consents as they were."""
    result = _join(shop.id)
    with pytest.raises(MembershipError):
        membership.update_preferences(
            shop.id,
            result.customer_id,
            first_name="Changed",
            birthday_day=30,
            birthday_month=2,
            locale="en",
            consents={"wallet": True},
        )
    customer = _customer(shop.id, result.customer_id)
    assert customer.first_name == "Ada" and customer.wallet_consent == "none"


# --- the confirmation email -------------------------------------------------------------------


def test_confirmation_email_is_kept_in_the_mailbox_in_the_customers_language(shop):
    """Without MAIL_SERVER the job's email lands in the mailbox, with link and address."""
    shop_id = shop.id
    with unscoped():
        merchant = db.session.get(type(shop), shop.id)
        merchant.postal_address = "1 High Street, Bath"
        db.session.commit()
    result = _join(shop.id, email_marketing=True, locale="he")
    db.session.remove()  # the job runs with its own session, as in a worker
    assert deliver_confirmation_email(result.customer_id) == "sent"
    with tenant(shop_id):
        [row] = db.session.scalars(select(MailboxMessage)).all()
    message = message_from_bytes(row.raw, policy=policy.default)
    assert row.to_address == "ada@example.com"
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert 'lang="he"' in html and 'dir="rtl"' in html
    assert "/confirm/" in text and "/prefs/" in text
    assert "1 High Street, Bath" in text and "1 High Street, Bath" in html


def test_confirmation_email_is_skipped_once_confirmed(shop):
    """A job that runs after the customer confirmed (or left) sends nothing."""
    result = _join(shop.id, email_marketing=True)
    membership.confirm_email(shop.id, result.customer_id)
    assert deliver_confirmation_email(result.customer_id) == "skipped"
    assert deliver_confirmation_email(999_999) == "skipped"


# --- export and deletion ------------------------------------------------------------------------


def _record_visit(merchant_id, customer_id, stamps=1):
    with tenant(merchant_id):
        card = db.session.scalars(select(Card).filter_by(customer_id=customer_id)).one()
        db.session.add(
            Visit(merchant_id=merchant_id, customer_id=customer_id, card_id=card.id, stamps=stamps)
        )
        db.session.add(
            Voucher(merchant_id=merchant_id, customer_id=customer_id, card_id=card.id,
                    title="A free coffee")
        )
        card.stamps += stamps
        db.session.commit()


def test_export_contains_profile_consent_history_card_visits_and_vouchers(shop):
    """'Download my data' holds everything kept about the customer, as JSON values."""
    import json

    result = _join(shop.id, email_marketing=True, wording=WORDING, birthday_day=1,
                   birthday_month=5)
    _record_visit(shop.id, result.customer_id, stamps=2)
    data = membership.export_customer_data(shop.id, result.customer_id)
    json.dumps(data)  # serialisable as it is
    assert data["profile"]["email"] == "ada@example.com"
    assert data["profile"]["birthday"] == {"day": 1, "month": 5, "year": None}
    assert data["consents"]["email"] == "pending"
    assert data["consent_history"][0]["wording"] == WORDING
    assert data["consent_history"][0]["ip"] == "203.0.113.9"
    assert data["card"]["stamps"] == 2
    assert [v["stamps"] for v in data["visits"]] == [2]
    assert [v["title"] for v in data["vouchers"]] == ["A free coffee"]


def test_delete_removes_the_customer_and_keeps_anonymous_visits_and_consents(shop):
    """Customer, card and vouchers go; visits and consent events stay without the person."""
    result = _join(shop.id, email_marketing=True)
    _record_visit(shop.id, result.customer_id)
    other = _join(shop.id, first_name="Bob", email="bob@example.com")
    _record_visit(shop.id, other.customer_id)

    membership.delete_customer(shop.id, result.customer_id, ip="192.0.2.1")

    with tenant(shop.id):
        assert db.session.get(Customer, result.customer_id) is None
        assert db.session.scalars(select(Card).filter_by(token=result.card_token)).first() is None
        assert db.session.query(Voucher).count() == 1  # Bob's
        visits = db.session.scalars(select(Visit).order_by(Visit.id)).all()
        assert len(visits) == 2
        assert (visits[0].customer_id, visits[0].card_id, visits[0].merchant_id) == (
            None,
            None,
            shop.id,
        )
        assert visits[1].customer_id == other.customer_id
        orphaned = db.session.scalars(
            select(ConsentEvent).filter(ConsentEvent.customer_id.is_(None))
        ).all()
    # The join's 'pending' and the withdrawals made before deletion are all kept.
    assert {e.state for e in orphaned} == {"pending", "withdrawn"}
    assert all(e.merchant_id == shop.id for e in orphaned)


@pytest.mark.integration
def test_delete_and_rejoin_work_on_postgresql(pg_app):
    """On PostgreSQL too: duplicate join finds the member; delete keeps anonymous visits."""
    with pg_app.app_context():
        merchant = gen_merchant("pgcafe")
        first = _join(merchant.id, email_marketing=True)
        assert _join(merchant.id, email="ADA@example.com").customer_id == first.customer_id
        _record_visit(merchant.id, first.customer_id)
        membership.delete_customer(merchant.id, first.customer_id)
        with tenant(merchant.id):
            assert db.session.query(Customer).count() == 0
            [visit] = db.session.scalars(select(Visit)).all()
            assert (visit.customer_id, visit.card_id) == (None, None)
            states = {e.state for e in db.session.scalars(select(ConsentEvent))}
        assert states == {"pending", "withdrawn"}
