"""Tags: rule tags follow their rule when recomputed (by the hourly job or
`flask tags update`), report what they added and removed, change nothing on a
second run, and never touch manual tags; manual tags go on and off customers
from the customer page; one merchant never sees another's tags.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from stampweb.campaigns import tags as tag_service
from stampweb.campaigns.segments import SegmentError
from stampweb.extensions import db
from stampweb.models import Customer, CustomerTag, Tag
from stampweb.tenancy import tenant, unscoped

from .factories import csrf_token_from, gen_customer, gen_merchant, login, owner_of

NOW = datetime(2026, 3, 10, 12, 0, 0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def any_app(request):
    """The unit app on SQLite, then a migrated app on a real PostgreSQL."""
    fixture = "app" if request.param == "sqlite" else "pg_app"
    application = request.getfixturevalue(fixture)
    with application.app_context():
        yield application


def rule(field: str, op: str, value) -> dict:
    return {"groups": [{"conditions": [{"field": field, "op": op, "value": value}]}]}


def tagged(merchant_id: int, tag_id: int) -> dict[int, str]:
    """customer id -> source of the tag's rows."""
    with tenant(merchant_id):
        return dict(db.session.execute(
            select(CustomerTag.customer_id, CustomerTag.source).where(CustomerTag.tag_id == tag_id)
        ).all())


def set_visits(customer: Customer, visits: int, last_visit_at=None) -> None:
    with tenant(customer.merchant_id):
        row = db.session.get(Customer, customer.id)
        row.visit_count = visits
        row.last_visit_at = last_visit_at
        db.session.commit()


def test_recompute_adds_and_removes_members_and_reports_counts(any_app):
    """A rule tag gains customers who start matching and loses those who stop."""
    m = gen_merchant()
    a = gen_customer(m, visit_count=6)
    b = gen_customer(m, visit_count=8)
    c = gen_customer(m, visit_count=1)
    regular = tag_service.create_tag(m.id, "regular", "rule", rule=rule("visit_count", "gt", 5))
    db.session.commit()
    first = tag_service.recompute_tag(m.id, regular.id, NOW)
    assert (first.added, first.removed) == (2, 0)
    assert tagged(m.id, regular.id) == {a.id: "rule", b.id: "rule"}
    set_visits(a, 2)
    set_visits(c, 7)
    second = tag_service.recompute_tag(m.id, regular.id, NOW)
    assert (second.name, second.added, second.removed) == ("regular", 1, 1)
    assert set(tagged(m.id, regular.id)) == {b.id, c.id}
    with tenant(m.id):
        assert db.session.get(Tag, regular.id).last_computed_at == NOW


def test_second_run_adds_nothing_and_removes_nothing(any_app):
    """Recomputing twice with no change in data reports 0 added, 0 removed."""
    m = gen_merchant()
    gen_customer(m, last_visit_at=NOW - timedelta(days=90), visit_count=3)
    gen_customer(m)
    tag_service.create_tag(m.id, "lapsed", "rule", rule=rule("days_since_last_visit", "gt", 60))
    db.session.commit()
    [first] = tag_service.update_tags(m.id, NOW)
    [again] = tag_service.update_tags(m.id, NOW)
    assert (first.added, first.removed) == (2, 0)
    assert (again.added, again.removed) == (0, 0)


def test_manual_tags_are_untouched_by_recompute(any_app):
    """Recompute only removes rows its rule put on; manual tags stay as they were."""
    m = gen_merchant()
    vip = gen_customer(m, visit_count=0)
    regular_customer = gen_customer(m, visit_count=9)
    manual = tag_service.add_manual_tag(m.id, vip.id, name="VIP")
    tag_service.add_manual_tag(m.id, regular_customer.id, tag_id=manual.id)
    rule_tag = tag_service.create_tag(m.id, "regular", "rule",
                                      rule=rule("visit_count", "gt", 5))
    db.session.commit()
    tag_service.update_tags(m.id, NOW)
    set_visits(regular_customer, 0)
    updates = tag_service.update_tags(m.id, NOW)
    assert [(u.name, u.added, u.removed) for u in updates] == [("regular", 0, 1)]
    assert tagged(m.id, manual.id) == {vip.id: "manual", regular_customer.id: "manual"}
    assert tagged(m.id, rule_tag.id) == {}


def test_rule_tags_cannot_be_set_by_hand(app):
    """A rule tag is its rule's to give: adding it by hand is refused."""
    with app.app_context():
        m = gen_merchant()
        customer = gen_customer(m)
        tag_service.create_tag(m.id, "regular", "rule", rule=rule("visit_count", "gt", 5))
        db.session.commit()
        with pytest.raises(SegmentError) as caught:
            tag_service.add_manual_tag(m.id, customer.id, name="Regular")
        assert "set by its rule" in caught.value.message


def test_a_rule_may_use_an_older_tag_and_sees_its_fresh_members(app):
    """Tags recompute in id order, so 'regular AND no email consent' uses fresh regulars."""
    with app.app_context():
        m = gen_merchant()
        c = gen_customer(m, visit_count=9)
        regular = tag_service.create_tag(m.id, "regular", "rule",
                                         rule=rule("visit_count", "gt", 5))
        db.session.commit()
        tag_service.create_tag(m.id, "regular, not mailable", "rule", rule={"groups": [
            {"conditions": [{"field": "has_tag", "op": "is", "value": regular.id},
                            {"field": "consent", "op": "not_granted", "value": "email"}]}]})
        db.session.commit()
        updates = tag_service.update_tags(m.id, NOW)
        assert [(u.name, u.added) for u in updates] == [("regular", 1),
                                                         ("regular, not mailable", 1)]
        assert c.id in tagged(m.id, updates[1].tag_id)


def test_tag_names_are_unique_per_merchant_not_across(app):
    """Two merchants may both have 'VIP'; one merchant cannot have it twice."""
    with app.app_context():
        a, b = gen_merchant(), gen_merchant()
        tag_service.create_tag(a.id, "VIP")
        tag_service.create_tag(b.id, "VIP")
        db.session.commit()
        with pytest.raises(SegmentError) as caught:
            tag_service.create_tag(a.id, "vip")
        assert caught.value.path == "name"


def test_update_for_one_merchant_leaves_the_others(app):
    """`update_tags(merchant)` recomputes that merchant's tags only."""
    with app.app_context():
        a, b = gen_merchant(), gen_merchant()
        gen_customer(a, visit_count=9)
        gen_customer(b, visit_count=9)
        ta = tag_service.create_tag(a.id, "regular", "rule", rule=rule("visit_count", "gt", 5))
        tb = tag_service.create_tag(b.id, "regular", "rule", rule=rule("visit_count", "gt", 5))
        db.session.commit()
        assert [u.tag_id for u in tag_service.update_tags(a.id, NOW)] == [ta.id]
        assert tagged(b.id, tb.id) == {}
        # Each tag's members are its own merchant's customers only.
        tag_service.update_tags(None, NOW)
        with unscoped():
            rows = db.session.execute(select(CustomerTag.merchant_id, Customer.merchant_id)
                                      .join(Customer, Customer.id == CustomerTag.customer_id))
            assert all(tag_m == customer_m for tag_m, customer_m in rows)


def test_cli_tags_update_reports_added_and_removed(app, runner):
    """`flask tags update` prints each tag's added/removed counts, then a total."""
    with app.app_context():
        m = gen_merchant(slug="bean")
        gen_customer(m, visit_count=9)
        gen_customer(m, visit_count=7)
        tag_service.create_tag(m.id, "regular", "rule", rule=rule("visit_count", "gt", 5))
        tag_service.create_tag(m.id, "VIP")
        db.session.commit()
    result = runner.invoke(args=["tags", "update"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "bean / regular: added 2, removed 0",
        "Total: 1 tags, added 2, removed 0",
    ]
    again = runner.invoke(args=["tags", "update", "--merchant", "bean"])
    assert "bean / regular: added 0, removed 0" in again.output
    unknown = runner.invoke(args=["tags", "update", "--merchant", "nope"])
    assert unknown.exit_code != 0 and "No merchant" in unknown.output


def test_hourly_job_is_in_the_cron_table_and_updates_tags(app):
    """`rq cron` runs update_rule_tags at minute 7 of every hour; the job recomputes."""
    import fakeredis
    from rq.cron import CronScheduler

    from stampweb.tasks.tags import update_rule_tags

    scheduler = CronScheduler(connection=fakeredis.FakeRedis())
    scheduler.load_config_from_file("stampweb.tasks.cron")
    jobs = {job.func_name: job for job in scheduler.get_jobs()}
    job = jobs["stampweb.tasks.tags.update_rule_tags"]
    assert job.cron == "7 * * * *"
    assert job.job_options["job_timeout"] == 600
    with app.app_context():
        m = gen_merchant()
        gen_customer(m, visit_count=9)
        tag_service.create_tag(m.id, "regular", "rule", rule=rule("visit_count", "gt", 5))
        db.session.commit()
        assert update_rule_tags() == {"tags": 1, "added": 1, "removed": 0}


# --- pages ------------------------------------------------------------------------------


@pytest.fixture
def shop(app, client):
    with app.app_context():
        m = gen_merchant()
        regular = gen_customer(m, visit_count=9, first_name="Regina")
        casual = gen_customer(m, visit_count=1, first_name="Cass")
        other = gen_merchant()
        stranger = gen_customer(other)
        their_tag = tag_service.create_tag(other.id, "Theirs")
        db.session.commit()
        login(client, owner_of(m).email)
        return {"merchant_id": m.id, "regular": regular.id, "casual": casual.id,
                "stranger": stranger.id, "their_tag": their_tag.id}


def _token(client) -> str:
    return csrf_token_from(client.get("/admin/tags").text)


def test_tags_page_creates_manual_and_rule_tags_and_recomputes(app, client, shop):
    """The tags page lists tags with member counts; a rule tag applies on save."""
    token = _token(client)
    made = client.post("/admin/tags", data={"csrf_token": token, "name": "VIP"})
    assert made.status_code == 303
    clash = client.post("/admin/tags", data={"csrf_token": token, "name": "vip"})
    assert clash.status_code == 422 and "There is already a tag with this name." in clash.text
    page = client.get("/admin/tags/new")
    saved = client.post("/admin/tags/new", data={
        "csrf_token": csrf_token_from(page.text), "name": "regular", "match": "all",
        "groups-0-match": "all", "groups-0-conditions-0-field": "visit_count",
        "groups-0-conditions-0-op": "gt", "groups-0-conditions-0-value": "5"})
    assert saved.status_code == 303
    shown = client.get(saved.headers["Location"])
    assert "1 added, 0 removed" in shown.text and "Regina" in shown.text
    listing = client.get("/admin/tags")
    assert "regular" in listing.text and "VIP" in listing.text and "Theirs" not in listing.text
    recompute = client.post("/admin/tags/recompute", data={"csrf_token": token})
    assert recompute.status_code == 303
    assert "0 added, 0 removed" in client.get("/admin/tags").text


def test_rule_tag_form_shows_errors_and_saves_nothing(app, client, shop):
    """A rule tag with a bad condition re-renders with the message; no tag is made."""
    page = client.get("/admin/tags/new")
    response = client.post("/admin/tags/new", data={
        "csrf_token": csrf_token_from(page.text), "name": "broken", "match": "all",
        "groups-0-match": "all", "groups-0-conditions-0-field": "birthday_in_month",
        "groups-0-conditions-0-op": "eq", "groups-0-conditions-0-value": ""})
    assert response.status_code == 422
    assert "Enter a number." in response.text and 'value="broken"' in response.text
    with app.app_context(), unscoped():
        assert db.session.query(Tag).count() == 1  # only the other merchant's


def test_manual_tag_on_a_customer_with_htmx_and_without(app, client, shop):
    """The customer tags partial adds and removes manual tags, as a fragment or by redirect."""
    token = _token(client)
    url = f"/admin/customers/{shop['regular']}/tags"
    plain = client.post(url, data={"csrf_token": token, "name": "Knows the barista",
                                   "next": f"/admin/customers/{shop['regular']}"})
    assert plain.status_code == 303
    assert plain.headers["Location"].endswith(f"/admin/customers/{shop['regular']}")
    fragment = client.post(url, headers={"HX-Request": "true"},
                           data={"csrf_token": token, "name": "Oat milk"})
    assert fragment.status_code == 200
    assert 'id="customer-tags"' in fragment.text and "<html" not in fragment.text
    assert "Knows the barista" in fragment.text and "Oat milk" in fragment.text
    with app.app_context():
        tag_id = next(t.id for t in tag_service.tags_of_customer(shop["merchant_id"],
                                                                 shop["regular"])
                      if t.name == "Oat milk")
    removed = client.post(f"{url}/{tag_id}/remove", headers={"HX-Request": "true"},
                          data={"csrf_token": token})
    assert "Tag “Oat milk” removed." in removed.text
    listed = removed.text.split('<ul class="tag-list">')[1].split("</ul>")[0]
    assert "Oat milk" not in listed and "Knows the barista" in listed
    unsafe = client.post(url, data={"csrf_token": token, "name": "x", "next": "//evil.test"})
    assert unsafe.headers["Location"].endswith("/admin/tags")


def test_another_merchants_customers_and_tags_are_404(client, shop):
    """Tag routes with another merchant's customer or tag ids answer 404."""
    token = _token(client)
    assert client.post(f"/admin/customers/{shop['stranger']}/tags",
                       data={"csrf_token": token, "name": "x"}).status_code == 404
    assert client.get(f"/admin/tags/{shop['their_tag']}").status_code == 404
    assert client.post(f"/admin/tags/{shop['their_tag']}/delete",
                       data={"csrf_token": token}).status_code == 404
    assert client.post(f"/admin/customers/{shop['regular']}/tags/{shop['their_tag']}/remove",
                       data={"csrf_token": token}).status_code == 404
