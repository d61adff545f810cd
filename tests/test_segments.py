"""Segments: every condition picks the right customers, on SQLite and on PostgreSQL;
groups combine with AND/OR; bad rules say what is wrong and where; one merchant's
segment never reaches another merchant's customers; the builder works with and
without JavaScript.

The condition tests run twice: on the unit app (SQLite) and on a real
PostgreSQL migrated to head (`pg_app`), with the same assertions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from stampweb.campaigns import segments
from stampweb.campaigns import tags as tag_service
from stampweb.campaigns.segments import SegmentError, birthday_ranges
from stampweb.extensions import db
from stampweb.models import (
    VISIT_REVERSAL,
    Card,
    Location,
    Program,
    Segment,
    Visit,
    Voucher,
)
from stampweb.tenancy import tenant, unscoped

from .factories import csrf_token_from, gen_customer, gen_merchant, login, owner_of

NOW = datetime(2026, 3, 10, 12, 0, 0)  # naive UTC; merchants below are on UTC unless said


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def any_app(request):
    """The unit app on SQLite, then a migrated app on a real PostgreSQL."""
    fixture = "app" if request.param == "sqlite" else "pg_app"
    application = request.getfixturevalue(fixture)
    with application.app_context():
        yield application


def one(field: str, op: str, value, **extra) -> dict:
    """A rule tree with a single condition."""
    return {"match": "all", "groups": [
        {"match": "all", "conditions": [{"field": field, "op": op, "value": value, **extra}]}
    ]}


def members(merchant, rules, now=NOW) -> set[int]:
    """Matching customer ids; also checks the database count agrees."""
    with tenant(merchant.id):
        ids = set(db.session.scalars(segments.compile_segment(merchant.id, rules, now)))
    assert segments.count_audience(merchant.id, rules, now) == len(ids)
    return ids


def set_card_stamps(customer, stamps: int) -> None:
    with tenant(customer.merchant_id):
        card = db.session.scalar(select(Card).where(Card.customer_id == customer.id))
        card.stamps = stamps
        db.session.commit()


def add_rows(merchant_id: int, *rows) -> None:
    with tenant(merchant_id):
        db.session.add_all(rows)
        db.session.commit()


def location_of(merchant) -> int:
    with tenant(merchant.id):
        return db.session.scalar(select(Location.id))


# --- each condition ----------------------------------------------------------------------


def test_days_since_last_visit_counts_never_visited_as_long_ago(any_app):
    """'More than N days' includes customers who never visited; 'less than' never does."""
    m = gen_merchant()
    recent = gen_customer(m, last_visit_at=NOW - timedelta(days=2), visit_count=1)
    lapsed = gen_customer(m, last_visit_at=NOW - timedelta(days=40), visit_count=3)
    never = gen_customer(m)
    assert members(m, one("days_since_last_visit", "gt", 30)) == {lapsed.id, never.id}
    assert members(m, one("days_since_last_visit", "lt", 7)) == {recent.id}
    assert members(m, one("days_since_last_visit", "gt", 1)) == {recent.id, lapsed.id, never.id}


def test_days_since_last_visit_uses_the_merchants_calendar_days(any_app):
    """Days are local dates: 23:00 yesterday in Almaty is 1 day ago at 01:00 today."""
    m = gen_merchant(timezone="Asia/Almaty")  # UTC+5
    now = datetime(2026, 3, 9, 20, 0)  # 01:00 on 10 March in Almaty
    yesterday = gen_customer(m, last_visit_at=datetime(2026, 3, 9, 18, 0))  # 23:00 local 9th
    today = gen_customer(m, last_visit_at=datetime(2026, 3, 9, 19, 30))  # 00:30 local 10th
    assert members(m, one("days_since_last_visit", "lt", 1), now) == {today.id}
    assert members(m, one("days_since_last_visit", "gt", 0), now) == {yesterday.id}


def test_visit_count_more_fewer_exactly(any_app):
    """Visit count compares with more than, fewer than and exactly."""
    m = gen_merchant()
    few = gen_customer(m, visit_count=1)
    some = gen_customer(m, visit_count=5)
    many = gen_customer(m, visit_count=12)
    assert members(m, one("visit_count", "gt", 5)) == {many.id}
    assert members(m, one("visit_count", "lt", 5)) == {few.id}
    assert members(m, one("visit_count", "eq", "5")) == {some.id}


def test_total_spent_compares_money_exactly(any_app):
    """Total spent compares as a decimal amount (typed with a comma or a point)."""
    m = gen_merchant()
    low = gen_customer(m, total_spent=Decimal("9.99"))
    edge = gen_customer(m, total_spent=Decimal("10.00"))
    high = gen_customer(m, total_spent=Decimal("250.50"))
    assert members(m, one("total_spent", "gt", "10")) == {high.id}
    assert members(m, one("total_spent", "lt", "10,00")) == {low.id}
    assert edge.id not in members(m, one("total_spent", "gt", "10.00"))


def test_stamps_to_reward_uses_the_programs_card_size(any_app):
    """Stamps to the next reward is the program's stamps_required minus the card's stamps."""
    m = gen_merchant()
    with tenant(m.id):
        db.session.scalar(select(Program)).stamps_required = 8
        db.session.commit()
    close = gen_customer(m)
    set_card_stamps(close, 7)  # 1 to go
    two = gen_customer(m)
    set_card_stamps(two, 6)  # 2 to go
    far = gen_customer(m)  # 8 to go
    assert members(m, one("stamps_to_reward", "lte", 2)) == {close.id, two.id}
    assert members(m, one("stamps_to_reward", "eq", 1)) == {close.id}
    assert members(m, one("stamps_to_reward", "eq", 8)) == {far.id}


def test_unused_voucher_and_expiring_within(any_app):
    """An active, unexpired voucher counts; 'expiring within N days' narrows by expiry."""
    m = gen_merchant()
    forever = gen_customer(m)
    soon = gen_customer(m)
    expired = gen_customer(m)
    redeemed = gen_customer(m)
    nothing = gen_customer(m)
    add_rows(
        m.id,
        Voucher(merchant_id=m.id, customer_id=forever.id, title="A"),
        Voucher(merchant_id=m.id, customer_id=soon.id, title="B",
                expires_at=NOW + timedelta(days=3)),
        Voucher(merchant_id=m.id, customer_id=expired.id, title="C",
                expires_at=NOW - timedelta(hours=1)),
        Voucher(merchant_id=m.id, customer_id=redeemed.id, title="D", status="redeemed"),
    )
    assert members(m, one("has_unused_voucher", "is", True)) == {forever.id, soon.id}
    assert members(m, one("has_unused_voucher", "is", "false")) == {
        expired.id, redeemed.id, nothing.id}
    assert members(m, one("has_unused_voucher", "is", True, expiring_within_days=7)) == {soon.id}
    assert members(m, one("has_unused_voucher", "is", True, expiring_within_days=2)) == set()


def _born(m, month, day):
    return gen_customer(m, birthday_month=month, birthday_day=day)


def test_birthday_within_days_wraps_over_new_year(any_app):
    """From 28 December, 'within 7 days' takes birthdays up to 4 January."""
    m = gen_merchant()
    dec30 = _born(m, 12, 30)
    jan4 = _born(m, 1, 4)
    _born(m, 1, 5)
    _born(m, 12, 27)
    gen_customer(m)  # no birthday given
    now = datetime(2026, 12, 28, 9, 0)
    assert members(m, one("birthday_within_days", "within", 7), now) == {dec30.id, jan4.id}


def test_birthday_on_29_february_is_celebrated_on_28_february_in_other_years(any_app):
    """In a year without 29 February, those born on it count on 28 February (not 1 March)."""
    m = gen_merchant()
    leapling = _born(m, 2, 29)
    feb28 = _born(m, 2, 28)
    mar1 = _born(m, 3, 1)
    rule = one("birthday_within_days", "within", 0)
    assert members(m, rule, datetime(2027, 2, 28, 12)) == {leapling.id, feb28.id}
    assert members(m, rule, datetime(2027, 3, 1, 12)) == {mar1.id}
    assert members(m, rule, datetime(2028, 2, 28, 12)) == {feb28.id}  # 2028 has a 29th
    assert members(m, rule, datetime(2028, 2, 29, 12)) == {leapling.id}


def test_birthday_today_is_the_merchants_local_today(any_app):
    """At 01:00 on 1 January in Auckland it is still 31 December in UTC: 1 January counts."""
    m = gen_merchant(timezone="Pacific/Auckland")
    jan1 = _born(m, 1, 1)
    _born(m, 12, 31)
    now = datetime(2026, 12, 31, 12, 0)  # 01:00 on 1 January 2027 in Auckland (UTC+13)
    assert members(m, one("birthday_within_days", "within", 0), now) == {jan1.id}


def test_birthday_in_month(any_app):
    """Birthday in a month picks that month only."""
    m = gen_merchant()
    march = _born(m, 3, 15)
    _born(m, 4, 1)
    assert members(m, one("birthday_in_month", "eq", "3")) == {march.id}


def test_joined_within_days(any_app):
    """Joined within N days: from local day today-N onwards."""
    m = gen_merchant()
    new = gen_customer(m, joined_at=NOW - timedelta(days=3))
    gen_customer(m, joined_at=NOW - timedelta(days=60))
    assert members(m, one("joined_within_days", "within", 7)) == {new.id}


def test_has_tag_and_lacks_tag(any_app):
    """Has tag / lacks tag follow the customer's tags."""
    m = gen_merchant()
    tagged = gen_customer(m)
    other = gen_customer(m)
    tag = tag_service.add_manual_tag(m.id, tagged.id, name="VIP")
    db.session.commit()
    assert members(m, one("has_tag", "is", tag.id)) == {tagged.id}
    assert members(m, one("lacks_tag", "is", str(tag.id))) == {other.id}


def test_consent_per_channel(any_app):
    """Consent is per channel; a suppressed email address does not count as email consent."""
    m = gen_merchant()
    email = gen_customer(m, email_consent="granted")
    bounced = gen_customer(m, email_consent="granted", email_suppressed_at=NOW)
    wallet = gen_customer(m, wallet_consent="granted", email_consent="withdrawn")
    assert members(m, one("consent", "granted", "email")) == {email.id}
    assert members(m, one("consent", "not_granted", "email")) == {bounced.id, wallet.id}
    assert members(m, one("consent", "granted", "wallet")) == {wallet.id}
    assert members(m, one("consent", "granted", "reminders")) == set()


def test_language_in_list(any_app):
    """Language matches any of the chosen languages."""
    m = gen_merchant()
    ru = gen_customer(m, locale="ru")
    kk = gen_customer(m, locale="kk")
    gen_customer(m, locale="en")
    assert members(m, one("language", "in", ["ru", "kk"])) == {ru.id, kk.id}
    assert members(m, one("language", "in", "kk")) == {kk.id}


def test_visited_location_optionally_recently_and_not_undone(any_app):
    """Visited a location (within N days); a stamp that was undone is not a visit."""
    m = gen_merchant()
    with tenant(m.id):
        second = Location(merchant_id=m.id, name="Second shop")
        db.session.add(second)
        db.session.commit()
        second_id = second.id
    first_id = location_of(m)
    long_ago = gen_customer(m)
    lately = gen_customer(m)
    undone = gen_customer(m)
    elsewhere = gen_customer(m)
    add_rows(
        m.id,
        Visit(merchant_id=m.id, customer_id=long_ago.id, location_id=first_id,
              created_at=NOW - timedelta(days=90)),
        Visit(merchant_id=m.id, customer_id=lately.id, location_id=first_id,
              created_at=NOW - timedelta(days=2)),
        Visit(merchant_id=m.id, customer_id=elsewhere.id, location_id=second_id,
              created_at=NOW - timedelta(days=1)),
    )
    stamp = Visit(merchant_id=m.id, customer_id=undone.id, location_id=first_id,
                  created_at=NOW - timedelta(days=1))
    add_rows(m.id, stamp)
    add_rows(m.id, Visit(merchant_id=m.id, customer_id=undone.id, location_id=first_id,
                         kind=VISIT_REVERSAL, stamps=-1, reverses_id=stamp.id,
                         created_at=NOW - timedelta(days=1)))
    assert members(m, one("visited_location", "is", first_id)) == {long_ago.id, lately.id}
    assert members(m, one("visited_location", "is", first_id, within_days=30)) == {lately.id}
    assert members(m, one("visited_location", "is", second_id)) == {elsewhere.id}


# --- combining, validating, isolating ---------------------------------------------------


def test_groups_combine_with_and_or(any_app):
    """(visits > 5 AND email consent) OR (birthday in March): one level of groups."""
    m = gen_merchant()
    loyal_mailable = gen_customer(m, visit_count=9, email_consent="granted")
    gen_customer(m, visit_count=9)  # loyal but no consent
    march = gen_customer(m, birthday_month=3, birthday_day=2)
    rules = {"match": "any", "groups": [
        {"match": "all", "conditions": [
            {"field": "visit_count", "op": "gt", "value": 5},
            {"field": "consent", "op": "granted", "value": "email"}]},
        {"match": "all", "conditions": [
            {"field": "birthday_in_month", "op": "eq", "value": 3}]},
    ]}
    assert members(m, rules) == {loyal_mailable.id, march.id}
    rules["match"] = "all"
    assert members(m, rules) == set()
    rules["groups"][0]["match"] = "any"
    assert members(m, rules) == set()
    either = {"match": "all", "groups": [{"match": "any", "conditions": [
        {"field": "visit_count", "op": "gt", "value": 5},
        {"field": "birthday_in_month", "op": "eq", "value": 3}]}]}
    assert len(members(m, either)) == 3
    assert members(m, {"match": "all", "groups": []}) == members(m, None)
    assert len(members(m, None)) == 3


def test_one_merchants_segment_never_counts_another_merchants_customers(any_app):
    """Merchant A's segment, even naming B's tag or location, never reaches B's customers."""
    a = gen_merchant()
    b = gen_merchant()
    mine = gen_customer(a, visit_count=3)
    gen_customer(b, visit_count=3)
    b_tag = tag_service.create_tag(b.id, "B only")
    db.session.commit()
    assert members(a, one("visit_count", "gt", 1)) == {mine.id}
    assert segments.count_audience(a.id, None) == 1
    with pytest.raises(SegmentError) as caught:
        segments.validate_rules(one("has_tag", "is", b_tag.id), a.id)
    assert caught.value.path == "groups.0.conditions.0.value"
    with pytest.raises(SegmentError):
        segments.validate_rules(one("visited_location", "is", location_of(b)), a.id)
    # Even unvalidated, B's tag matches nothing for A: the query filters on A itself.
    assert members(a, one("lacks_tag", "is", b_tag.id)) == {mine.id}


def test_invalid_rules_say_what_is_wrong_and_where(app):
    """Each problem comes with the path of the input it belongs to."""
    with app.app_context():
        bad = {"match": "some", "groups": [
            {"match": "all", "conditions": [
                {"field": "visit_count", "op": "gt", "value": "lots"},
                {"field": "nonsense", "op": "gt", "value": 1},
                {"field": "birthday_in_month", "op": "eq", "value": 13},
                {"field": "consent", "op": "granted", "value": "fax"},
                {"field": "total_spent", "op": "gt", "value": "-5"},
                {"field": "language", "op": "in", "value": ["xx"]},
                {"field": "has_unused_voucher", "op": "is", "value": "maybe"},
                {"field": "days_since_last_visit", "op": "between", "value": 3}]},
            {"match": "all", "conditions": []},
        ]}
        with pytest.raises(SegmentError) as caught:
            segments.validate_rules(bad)
        errors = dict(caught.value.errors)
        assert errors["match"] == "Choose “all” or “any”."
        assert errors["groups.0.conditions.0.value"] == "Enter a whole number."
        assert errors["groups.0.conditions.1.field"] == "Choose what this condition looks at."
        assert errors["groups.0.conditions.2.value"] == "Enter a number from 1 to 12."
        assert errors["groups.0.conditions.3.value"] == "Choose a channel."
        assert errors["groups.0.conditions.4.value"] == "Enter an amount, e.g. 25.00."
        assert errors["groups.0.conditions.5.value"] == "Unknown language: xx."
        assert errors["groups.0.conditions.6.value"] == "Choose yes or no."
        assert errors["groups.0.conditions.7.op"] == "Choose how to compare."
        assert errors["groups.1"] == "Add a condition to this group or remove the group."
        assert caught.value.path == "match"
        with pytest.raises(SegmentError) as caught:
            segments.validate_rules({"version": 2, "groups": []})
        assert caught.value.path == "version"


def test_validated_rules_are_typed_and_versioned(app):
    """Form strings come back as numbers, booleans and lists, with the schema version."""
    with app.app_context():
        clean = segments.validate_rules({"groups": [{"conditions": [
            {"field": "visit_count", "op": "gt", "value": " 4 "},
            {"field": "has_unused_voucher", "op": "is", "value": "true",
             "expiring_within_days": "7"},
            {"field": "total_spent", "op": "lt", "value": "12,5"},
            {"field": "language", "op": "in", "value": "ru, kk"}]}]})
        assert clean == {"version": 1, "match": "all", "groups": [{"match": "all", "conditions": [
            {"field": "visit_count", "op": "gt", "value": 4},
            {"field": "has_unused_voucher", "op": "is", "value": True,
             "expiring_within_days": 7},
            {"field": "total_spent", "op": "lt", "value": "12.50"},
            {"field": "language", "op": "in", "value": ["ru", "kk"]}]}]}


def test_birthday_ranges_cover_the_window_as_month_runs():
    """The birthday window compiles to a few (month, first day, last day) ranges."""
    from datetime import date

    assert birthday_ranges(date(2026, 12, 28), 7) == [(1, 1, 4), (12, 28, 31)]
    assert birthday_ranges(date(2027, 2, 27), 1) == [(2, 27, 29)]
    assert birthday_ranges(date(2028, 2, 27), 1) == [(2, 27, 28)]
    assert len(birthday_ranges(date(2026, 1, 15), 365)) == 12


def test_audience_walks_by_key_in_batches(app):
    """iter_audience_ids yields ascending id batches and resumes after a given id."""
    with app.app_context():
        m = gen_merchant()
        ids = [gen_customer(m, visit_count=2).id for _ in range(7)]
        gen_customer(m, visit_count=0)
        rules = one("visit_count", "gt", 1)
        batches = list(segments.iter_audience_ids(m.id, rules, batch_size=3))
        assert batches == [ids[0:3], ids[3:6], ids[6:7]]
        assert list(segments.iter_audience_ids(m.id, rules, 5, after_id=ids[3])) == [ids[4:]]
        sample = segments.sample_audience(m.id, rules, limit=2)
        assert [c.id for c in sample] == [ids[6], ids[5]]


def test_saving_a_segment_validates_name_and_rules_and_saves_nothing_when_bad(app):
    """A segment saves with a name and valid rules; otherwise nothing is written."""
    with app.app_context():
        m = gen_merchant()
        with pytest.raises(SegmentError) as caught:
            segments.save_segment(m.id, "  ", one("visit_count", "gt", "x"))
        assert {p for p, _msg in caught.value.errors} == {"name", "groups.0.conditions.0.value"}
        db.session.rollback()
        saved = segments.save_segment(m.id, "Regulars", one("visit_count", "gt", "4"))
        db.session.commit()
        with tenant(m.id):
            stored = db.session.get(Segment, saved.id)
        assert stored.rules["groups"][0]["conditions"][0]["value"] == 4
        with unscoped():
            assert db.session.query(Segment).count() == 1


# --- the builder page ----------------------------------------------------------------------


@pytest.fixture
def manager_client(app, client):
    with app.app_context():
        m = gen_merchant()
        for visits in (1, 6, 9):
            gen_customer(m, visit_count=visits, first_name=f"V{visits}")
        other = gen_merchant()
        gen_customer(other, visit_count=50)
        login(client, owner_of(m).email)
        client.merchant_id = m.id
        client.other_merchant_id = other.id
    return client


def _builder_form(page_html: str, **fields) -> dict:
    data = {"csrf_token": csrf_token_from(page_html), "name": "Regulars", "match": "all",
            "groups-0-match": "all",
            "groups-0-conditions-0-field": "visit_count",
            "groups-0-conditions-0-op": "gt",
            "groups-0-conditions-0-value": "5"}
    data.update(fields)
    return data


def test_builder_saves_without_javascript(app, manager_client):
    """The plain form posts, saves the segment and shows the audience count."""
    page = manager_client.get("/admin/segments/new")
    assert page.status_code == 200
    assert 'name="groups-0-conditions-0-field"' in page.text
    response = manager_client.post("/admin/segments/new", data=_builder_form(page.text))
    assert response.status_code == 303
    shown = manager_client.get(response.headers["Location"])
    assert "2</strong>" in shown.text  # V6 and V9
    with app.app_context(), tenant(manager_client.merchant_id):
        segment = db.session.scalar(select(Segment))
    assert segment.rules["groups"][0]["conditions"][0] == {
        "field": "visit_count", "op": "gt", "value": 5}
    listing = manager_client.get("/admin/segments")
    assert "Regulars" in listing.text


def test_builder_shows_errors_next_to_the_condition_and_keeps_what_was_typed(app, manager_client):
    """A bad value re-renders with the message at its condition; nothing is saved."""
    page = manager_client.get("/admin/segments/new")
    response = manager_client.post("/admin/segments/new", data=_builder_form(
        page.text, **{"groups-0-conditions-0-value": "many", "name": ""}))
    assert response.status_code == 422
    assert 'id="groups-0-conditions-0-value-error">Enter a whole number.' in response.text
    assert 'value="many"' in response.text
    assert "Give the segment a name." in response.text
    with app.app_context(), unscoped():
        assert db.session.query(Segment).count() == 0


def test_builder_add_and_remove_condition_without_javascript(manager_client):
    """Add/Remove buttons post the form and return the page with the change, unsaved."""
    page = manager_client.get("/admin/segments/new")
    added = manager_client.post("/admin/segments/new", data=_builder_form(
        page.text, action="add_condition-0"))
    assert added.status_code == 200
    assert 'name="groups-0-conditions-1-field"' in added.text
    assert "<html" in added.text
    grouped = manager_client.post("/admin/segments/new", data=_builder_form(
        page.text, action="add_group"))
    assert 'name="groups-1-conditions-0-field"' in grouped.text
    removed = manager_client.post("/admin/segments/new", data=_builder_form(
        page.text, action="remove_condition-0-0"))
    assert 'name="groups-0-conditions-0-field"' not in removed.text
    assert "every customer matches" in removed.text


def test_builder_htmx_buttons_swap_only_the_builder(manager_client):
    """With HX-Request the same POST answers with the builder fragment and a recount event."""
    page = manager_client.get("/admin/segments/new")
    headers = {"HX-Request": "true"}
    response = manager_client.post("/admin/segments/new", headers=headers, data=_builder_form(
        page.text, action="add_condition-0"))
    assert response.status_code == 200
    assert "<html" not in response.text
    assert 'id="segment-builder"' in response.text
    assert 'name="groups-0-conditions-1-field"' in response.text
    assert response.headers["HX-Trigger"] == "segment-changed"
    # Switching a condition's field redraws its inputs for the new field.
    switched = manager_client.post("/admin/segments/new", headers=headers, data=_builder_form(
        page.text, action="refresh", **{"groups-0-conditions-0-field": "consent"}))
    assert 'value="email"' in switched.text and 'value="granted"' in switched.text


def test_live_count_endpoint_counts_only_this_merchant(manager_client):
    """The audience panel shows the count and a sample; never another merchant's customers."""
    page = manager_client.get("/admin/segments/new")
    response = manager_client.post("/admin/segments/count", headers={"HX-Request": "true"},
                                   data=_builder_form(page.text, **{
                                       "groups-0-conditions-0-value": "0"}))
    assert response.status_code == 200
    assert "<strong>3</strong>" in response.text  # not 4: the other shop's customer is out
    assert "V9" in response.text
    bad = manager_client.post("/admin/segments/count", data=_builder_form(
        page.text, **{"groups-0-conditions-0-value": "x"}))
    assert "Enter a whole number." in bad.text


def test_builder_pages_of_another_merchant_are_404(app, manager_client):
    """Another merchant's segment id answers 404, for GET and POST."""
    with app.app_context():
        seg = segments.save_segment(manager_client.other_merchant_id, "Theirs", None)
        db.session.commit()
        seg_id = seg.id
    page = manager_client.get("/admin/segments/new")
    assert manager_client.get(f"/admin/segments/{seg_id}").status_code == 404
    token = csrf_token_from(page.text)
    assert manager_client.post(f"/admin/segments/{seg_id}/delete",
                               data={"csrf_token": token}).status_code == 404
