"""The merchant's customer list, customer page, editing and CSV export."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.loyalty import csv_io
from stampweb.loyalty import customers as customer_service
from stampweb.loyalty.customers import CustomerFilters
from stampweb.models import (
    AuditLog,
    Card,
    ConsentEvent,
    Customer,
    Location,
    Merchant,
    Program,
    User,
    Visit,
    Voucher,
    utcnow,
)
from stampweb.tenancy import tenant, unscoped

from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, gen_user, login


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe")
        gen_user(merchant, "manager", "manager@cafe.test")
        gen_user(merchant, "staff", "staff@cafe.test")
        return merchant.id


def _merchant(app, merchant_id) -> Merchant:
    with app.app_context():
        return db.session.get(Merchant, merchant_id)


def _add_customers(merchant_id: int, count: int, **fields) -> list[int]:
    """Many customers with cards, in one commit (faster than the factory one by one)."""
    with tenant(merchant_id):
        program = db.session.scalars(select(Program)).first()
        customers = [
            Customer(merchant_id=merchant_id, first_name=f"Bulk{n}", last_name="Person",
                     search_name=f"bulk{n} person", email=f"bulk{n}@example.com", **fields)
            for n in range(count)
        ]
        db.session.add_all(customers)
        db.session.flush()
        db.session.add_all(
            Card(merchant_id=merchant_id, customer_id=c.id, program_id=program.id)
            for c in customers
        )
        db.session.commit()
        return [c.id for c in customers]


def _ids(page) -> list[int]:
    return [c.id for c in page.customers]


# --- the list ----------------------------------------------------------------------


def test_list_pages_by_key_newest_first(app, shop):
    """Following next_after walks every customer once, newest first, with no OFFSET."""
    with app.app_context():
        ids = _add_customers(shop, 23)
        seen, after = [], None
        while True:
            page = customer_service.search_customers(shop, CustomerFilters(), after=after, limit=10)
            seen += _ids(page)
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == sorted(ids, reverse=True)


def test_list_page_links_to_the_next_page(app, client, shop):
    """More than one page of customers: the page shows 50 and a Next link that continues."""
    with app.app_context():
        ids = _add_customers(shop, customer_service.PAGE_SIZE + 5)
    login(client, "manager@cafe.test")
    first = client.get("/admin/customers")
    assert first.status_code == 200
    shown = [int(i) for i in re.findall(r'href="/admin/customers/(\d+)"', first.text)]
    assert shown == sorted(ids, reverse=True)[: customer_service.PAGE_SIZE]
    next_link = html.unescape(re.search(r'rel="next" href="([^"]+)"', first.text).group(1))
    assert f"after={shown[-1]}" in next_link
    second = client.get(next_link)
    rest = [int(i) for i in re.findall(r'href="/admin/customers/(\d+)"', second.text)]
    assert rest == sorted(ids, reverse=True)[customer_service.PAGE_SIZE :]
    assert 'rel="next"' not in second.text


def test_next_page_link_keeps_the_search(app, client, shop):
    with app.app_context():
        _add_customers(shop, customer_service.PAGE_SIZE + 2)
    login(client, "manager@cafe.test")
    page = client.get("/admin/customers?q=bulk")
    next_link = html.unescape(re.search(r'rel="next" href="([^"]+)"', page.text).group(1))
    assert "q=bulk" in next_link


def test_htmx_search_returns_only_the_rows_fragment(app, client, shop):
    with app.app_context():
        gen_customer(_merchant(app, shop), first_name="Zelda", last_name="Fitz")
    login(client, "manager@cafe.test")
    response = client.get("/admin/customers?q=zel", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "<html" not in response.text
    assert 'id="customer-rows"' in response.text
    assert "Zelda Fitz" in response.text
    assert "HX-Request" in response.headers.get("Vary", "")


@pytest.fixture
def people(app, shop):
    with app.app_context():
        merchant = _merchant(app, shop)
        alice = gen_customer(merchant, first_name="Alice", last_name="Smith",
                             email="alice@example.com", phone="+77010001234")
        bob = gen_customer(merchant, first_name="Bob", last_name="Alison",
                           email="bob@mail.test", phone=None)
        carol = gen_customer(merchant, first_name="Carol", last_name="Jones",
                             email=None, phone="+4915112345678")
        return {"alice": alice.id, "bob": bob.id, "carol": carol.id,
                "alice_code": card_of(alice).code}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("ali", {"alice", "bob"}),        # first-name prefix, and last-name prefix
        ("SMITH", {"alice"}),             # last name, any case
        ("bob@", {"bob"}),                # email prefix
        ("alice@example.com", {"alice"}),
        ("001234", {"alice"}),            # phone digits, as staff type the end
        ("+49 151", {"carol"}),           # phone digits with a + and spaces
        ("nobody", set()),
    ],
)
def test_search_by_name_email_and_phone(app, shop, people, query, expected):
    with app.app_context():
        page = customer_service.search_customers(shop, CustomerFilters(q=query))
    assert set(_ids(page)) == {people[name] for name in expected}


def test_search_by_card_code(app, shop, people):
    with app.app_context():
        page = customer_service.search_customers(
            shop, CustomerFilters(q=people["alice_code"].lower())
        )
    assert _ids(page) == [people["alice"]]


def test_search_treats_like_wildcards_as_text(app, shop, people):
    with app.app_context():
        assert _ids(customer_service.search_customers(shop, CustomerFilters(q="%"))) == []
        assert _ids(customer_service.search_customers(shop, CustomerFilters(q="_"))) == []


def test_filters_consent_recent_visit_voucher_and_birthday(app, shop, people):
    """Each filter narrows the list to the customers it names."""
    now = utcnow()
    with app.app_context(), tenant(shop):
        alice, bob, carol = (db.session.get(Customer, people[k]) for k in ("alice", "bob", "carol"))
        alice.email_consent = "granted"
        bob.email_consent = "withdrawn"
        alice.last_visit_at = now - timedelta(days=3)
        bob.last_visit_at = now - timedelta(days=40)
        carol.birthday_month, carol.birthday_day = now.month, 1
        db.session.add(Voucher(merchant_id=shop, customer_id=bob.id, title="Coffee",
                               expires_at=now + timedelta(days=5)))
        db.session.add(Voucher(merchant_id=shop, customer_id=carol.id, title="Old",
                               expires_at=now - timedelta(days=1)))
        db.session.commit()

    def ids(**filters):
        return set(_ids(customer_service.search_customers(shop, CustomerFilters(**filters))))

    with app.app_context():
        assert ids(email_consent=True) == {people["alice"]}
        assert ids(visited_within_days=7) == {people["alice"]}
        assert ids(visited_within_days=90) == {people["alice"], people["bob"]}
        assert ids(active_voucher=True) == {people["bob"]}
        assert ids(birthday_this_month=True) == {people["carol"]}
        assert ids(q="ali", email_consent=True) == {people["alice"]}


def test_list_filters_arrive_from_the_query_string(app, client, shop, people):
    with app.app_context(), tenant(shop):
        db.session.get(Customer, people["bob"]).email_consent = "granted"
        db.session.commit()
    login(client, "manager@cafe.test")
    page = client.get("/admin/customers?email_consent=1")
    assert "Bob Alison" in page.text and "Alice Smith" not in page.text


def test_staff_cannot_open_the_customer_admin(client, shop, people):
    login(client, "staff@cafe.test")
    assert client.get("/admin/customers").status_code == 403
    assert client.get(f"/admin/customers/{people['alice']}").status_code == 403
    assert client.get("/admin/customers/export.csv").status_code == 403


# --- tenancy -----------------------------------------------------------------------


def test_another_merchants_customer_is_not_found_on_every_route(app, client, shop):
    """Merchant A's manager gets 404 for B's customer id on every customer route."""
    with app.app_context():
        other = gen_customer(gen_merchant("other"), first_name="Secret")
        other_id = other.id
    login(client, "manager@cafe.test")
    token = csrf_token_from(client.get("/admin/customers").text)
    customer_routes = [
        rule for rule in app.url_map.iter_rules() if "customer_id" in rule.arguments
        and rule.rule.startswith("/admin/")
    ]
    assert customer_routes
    for rule in customer_routes:
        url = rule.rule.replace("<int:customer_id>", str(other_id))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method,
                                   data={"csrf_token": token, "first_name": "Hacked"})
            assert response.status_code == 404, f"{method} {url}"
    with app.app_context(), unscoped():
        assert db.session.get(Customer, other_id).first_name == "Secret"
    page = client.get("/admin/customers?q=secret")
    assert "Secret" not in page.text


def test_export_contains_only_the_merchants_own_customers(app, client, shop, people):
    with app.app_context():
        gen_customer(gen_merchant("other"), email="stranger@example.com")
    login(client, "manager@cafe.test")
    body = client.get("/admin/customers/export.csv").get_data(as_text=True)
    assert "alice@example.com" in body
    assert "stranger@example.com" not in body


# --- the customer page -------------------------------------------------------------


def test_customer_page_shows_counters_card_and_a_timeline(app, client, shop, people):
    """Visits (and reversals), vouchers issued and redeemed, and consent changes, newest first."""
    now = utcnow()
    with app.app_context(), tenant(shop):
        alice = db.session.get(Customer, people["alice"])
        card = db.session.scalars(select(Card).filter_by(customer_id=alice.id)).one()
        location = db.session.scalars(select(Location)).first()
        visit = Visit(merchant_id=shop, customer_id=alice.id, card_id=card.id,
                      location_id=location.id, stamps=2, amount=Decimal("4.50"),
                      created_at=now - timedelta(days=3))
        db.session.add(visit)
        db.session.flush()
        db.session.add(Visit(merchant_id=shop, customer_id=alice.id, card_id=card.id,
                             kind="reversal", stamps=-1, reverses_id=visit.id,
                             reason="Pressed twice", created_at=now - timedelta(days=2)))
        db.session.add(Voucher(merchant_id=shop, customer_id=alice.id, title="Free cake",
                               issued_at=now - timedelta(days=1), status="redeemed",
                               redeemed_at=now - timedelta(hours=1)))
        db.session.add(ConsentEvent(merchant_id=shop, customer_id=alice.id, channel="email",
                                    state="granted", source="join",
                                    created_at=now - timedelta(days=4)))
        alice.visit_count, alice.total_spent, alice.last_visit_at = 1, Decimal("4.50"), now
        card.stamps = 1
        db.session.commit()
        entries = customer_service.timeline(shop, alice.id)
    assert [e.kind for e in entries] == [
        "voucher_redeemed", "voucher_issued", "reversal", "visit", "consent"
    ]
    login(client, "manager@cafe.test")
    page = client.get(f"/admin/customers/{people['alice']}")
    assert page.status_code == 200
    for text in ("Free cake", "Pressed twice", "source: join", "4.50", people["alice_code"]):
        assert text in page.text


def test_timeline_takes_extra_sources(app, shop, people):
    """Campaign messages plug in later through register_timeline_source()."""
    def messages(merchant_id, customer_id):
        return [customer_service.TimelineEntry(utcnow(), "message", "Spring promo sent")]

    customer_service.register_timeline_source(messages)
    try:
        with app.app_context():
            entries = customer_service.timeline(shop, people["alice"])
        assert entries[0].title == "Spring promo sent"
    finally:
        customer_service._EXTRA_SOURCES.remove(messages)


def _edit_form(page_text: str, **overrides) -> dict:
    data = {
        "first_name": "Alice", "last_name": "Smith", "email": "alice@example.com",
        "phone": "+77010001234", "birthday_day": "", "birthday_month": "",
        "birthday_year": "", "locale": "en", "csrf_token": csrf_token_from(page_text),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_manager_edits_a_customer(app, client, shop, people):
    login(client, "manager@cafe.test")
    page = client.get(f"/admin/customers/{people['alice']}")
    response = client.post(
        f"/admin/customers/{people['alice']}",
        data=_edit_form(page.text, first_name="Alicia", phone="+7 701 000-99-99",
                        birthday_day="29", birthday_month="2", locale="ru"),
    )
    assert response.status_code == 302
    with app.app_context(), tenant(shop):
        alice = db.session.get(Customer, people["alice"])
        assert (alice.first_name, alice.search_name) == ("Alicia", "alicia smith")
        assert alice.phone == "+77010009999"
        assert (alice.birthday_day, alice.birthday_month, alice.locale) == (29, 2, "ru")
        entry = db.session.scalars(select(AuditLog).filter_by(action="customer.update")).one()
        assert entry.subject_id == alice.id and "first_name" in entry.detail


def test_duplicate_email_on_edit_shows_message_next_to_field(app, client, shop, people):
    """Another customer's email: the error sits by the email field, typed values stay."""
    login(client, "manager@cafe.test")
    page = client.get(f"/admin/customers/{people['alice']}")
    response = client.post(
        f"/admin/customers/{people['alice']}",
        data=_edit_form(page.text, first_name="Typed name", email="BOB@mail.test"),
    )
    assert response.status_code == 200
    assert re.search(r'<p class="error" id="email-error">[^<]*another customer', response.text,
                     re.IGNORECASE)
    assert 'value="BOB@mail.test"' in response.text
    assert 'value="Typed name"' in response.text
    with app.app_context(), tenant(shop):
        assert db.session.get(Customer, people["alice"]).first_name == "Alice"


def test_duplicate_phone_on_edit_shows_message_next_to_field(app, client, shop, people):
    login(client, "manager@cafe.test")
    page = client.get(f"/admin/customers/{people['alice']}")
    response = client.post(
        f"/admin/customers/{people['alice']}",
        data=_edit_form(page.text, phone="+49 151 12345678"),
    )
    assert re.search(r'<p class="error" id="phone-error">', response.text)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"email": "not-an-address"}, "email"),
        ({"phone": "call me"}, "phone"),
        ({"birthday_day": "31", "birthday_month": "4"}, "birthday_day"),
        ({"birthday_day": "5"}, "birthday_day"),
    ],
)
def test_bad_customer_input_is_refused_next_to_the_field(
    app, client, shop, people, overrides, field
):
    login(client, "manager@cafe.test")
    page = client.get(f"/admin/customers/{people['alice']}")
    response = client.post(f"/admin/customers/{people['alice']}",
                           data=_edit_form(page.text, **overrides))
    assert response.status_code == 200
    assert re.search(rf'<p class="error" id="{field}-error">', response.text)


def test_staff_granted_consent_is_recorded_with_source_and_user(app, client, shop, people):
    """Ticking wallet and reminders records ConsentEvents with source "staff" and the user."""
    with app.app_context(), unscoped():
        manager_id = db.session.scalars(
            select(User.id).filter_by(email="manager@cafe.test")
        ).one()
    login(client, "manager@cafe.test")
    page = client.get(f"/admin/customers/{people['alice']}")
    response = client.post(
        f"/admin/customers/{people['alice']}",
        data=_edit_form(page.text, wallet_consent="y", reminders_consent="y"),
    )
    assert response.status_code == 302
    with app.app_context(), tenant(shop):
        alice = db.session.get(Customer, people["alice"])
        assert (alice.wallet_consent, alice.reminders_consent) == ("granted", "granted")
        events = db.session.scalars(
            select(ConsentEvent).filter_by(customer_id=alice.id).order_by(ConsentEvent.channel)
        ).all()
        assert [(e.channel, e.state, e.source, e.user_id) for e in events] == [
            ("reminders", "granted", "staff", manager_id),
            ("wallet", "granted", "staff", manager_id),
        ]

    # Unticking takes it back, again recorded as a staff change.
    page = client.get(f"/admin/customers/{people['alice']}")
    client.post(f"/admin/customers/{people['alice']}",
                data=_edit_form(page.text, reminders_consent="y"))
    with app.app_context(), tenant(shop):
        assert db.session.get(Customer, people["alice"]).wallet_consent == "withdrawn"
        last = db.session.scalars(
            select(ConsentEvent).filter_by(channel="wallet").order_by(ConsentEvent.id.desc())
        ).first()
        assert (last.state, last.source, last.user_id) == ("withdrawn", "staff", manager_id)


def test_staff_granted_email_consent_follows_double_opt_in(app, shop, people):
    """With double opt-in off, ticking email grants it; on, it waits for the confirmation."""
    with app.app_context():
        db.session.get(Merchant, shop).double_opt_in = False
        db.session.commit()
        changes = customer_service.CustomerChanges(
            first_name="Alice", last_name="Smith", email="alice@example.com",
            phone="+77010001234", locale="en", consents={"email": True},
        )
        result = customer_service.update_customer(shop, people["alice"], changes, user_id=None)
        assert result.consents == {"email": "granted"}
        with tenant(shop):
            event = db.session.scalars(select(ConsentEvent).filter_by(channel="email")).one()
            assert (event.state, event.source) == ("granted", "staff")


def test_email_consent_without_an_address_is_refused(app, shop, people):
    with app.app_context():
        changes = customer_service.CustomerChanges(
            first_name="Carol", phone="+4915112345678", locale="en", consents={"email": True},
        )
        with pytest.raises(customer_service.CustomerError) as caught:
            customer_service.update_customer(shop, people["carol"], changes)
        assert "email_consent" in caught.value.errors


# --- export ------------------------------------------------------------------------


def _export(client) -> list[dict]:
    response = client.get("/admin/customers/export.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text[1:])))


def test_export_lists_every_customer_with_counters_and_consent(app, client, shop, people):
    with app.app_context(), tenant(shop):
        alice = db.session.get(Customer, people["alice"])
        alice.visit_count, alice.total_spent = 7, Decimal("31.20")
        alice.email_consent, alice.birthday_day, alice.birthday_month = "granted", 9, 3
        db.session.commit()
        _add_customers(shop, 5)
    login(client, "manager@cafe.test")
    rows = _export(client)
    assert len(rows) == 8
    row = next(r for r in rows if r["email"] == "alice@example.com")
    assert row["visit_count"] == "7" and row["total_spent"] == "31.20"
    assert row["email_consent"] == "granted" and row["wallet_consent"] == "none"
    assert row["birthday"] == "09.03"
    assert row["phone"] == "+77010001234"  # a plain number is left as it is
    assert row["card_code"] == people["alice_code"]
    with app.app_context(), tenant(shop):
        assert db.session.scalars(select(AuditLog).filter_by(action="customers.export")).one()


def test_export_defuses_spreadsheet_formulas(app, client, shop):
    """Cells starting with = + - @ are prefixed with a quote so Excel shows them as text."""
    with app.app_context():
        merchant = _merchant(app, shop)
        gen_customer(merchant, first_name="=HYPERLINK(\"http://evil\")", last_name="@SUM(A1)",
                     email="formula@example.com")
        gen_customer(merchant, first_name="+1+cmd|' /C calc'!A0", last_name="-2+3",
                     email="formula2@example.com")
    login(client, "manager@cafe.test")
    rows = {r["email"]: r for r in _export(client)}
    assert rows["formula@example.com"]["first_name"] == "'=HYPERLINK(\"http://evil\")"
    assert rows["formula@example.com"]["last_name"] == "'@SUM(A1)"
    assert rows["formula2@example.com"]["first_name"].startswith("'+1+cmd")
    assert rows["formula2@example.com"]["last_name"] == "'-2+3"


def test_csv_safe_leaves_ordinary_values_alone():
    assert csv_io.csv_safe("Anna") == "Anna"
    assert csv_io.csv_safe("+4915112345678") == "+4915112345678"
    assert csv_io.csv_safe("-12.50") == "-12.50"
    assert csv_io.csv_safe("=1+2") == "'=1+2"
    assert csv_io.csv_safe("\t=cmd") == "'\t=cmd"
    assert csv_io.csv_safe(None) == ""
