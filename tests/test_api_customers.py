"""Customers through the API: create with consent, get, find, update, list, tag."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.models import ConsentEvent
from stampweb.tenancy import tenant

from .api_helpers import Api, is_problem, make_key
from .factories import card_of, gen_customer, gen_merchant


@pytest.fixture
def api(app, client):
    with app.app_context():
        merchant = gen_merchant(double_opt_in=False)
        api = Api(client, make_key(merchant))
        api.merchant_id = merchant.id
        return api


def test_create_answers_201_with_id_and_card_and_records_consent_from_api(app, api):
    response = api.post("/customers", {
        "first_name": "Ada", "last_name": "Byron", "email": "Ada@Example.com",
        "phone": "+44 20 7946 0958", "birthday": {"day": 10, "month": 12},
        "consent": {"email": True, "wording": "Yes, email me offers", "ip": "10.0.0.5"},
    })
    assert response.status_code == 201, response.data
    body = response.get_json()
    assert body["id"] and body["created"] is True
    assert body["card"]["code"] and body["card"]["url"].endswith("/card/" + body["card"]["url"]
                                                                 .rsplit("/", 1)[1])
    assert body["email"] == "ada@example.com" and body["phone"] == "+442079460958"
    assert body["consent"]["email"] == "granted" and body["consent"]["wallet"] == "none"
    assert response.headers["Location"] == f"/api/v1/customers/{body['id']}"
    with app.app_context(), tenant(api.merchant_id):
        [event] = db.session.scalars(select(ConsentEvent)).all()
        assert (event.channel, event.state, event.source) == ("email", "granted", "api")
        assert event.wording == "Yes, email me offers" and event.ip == "10.0.0.5"


def test_creating_a_known_email_answers_200_with_the_member(api):
    first = api.post("/customers", {"first_name": "Ada", "email": "ada@example.com"})
    again = api.post("/customers", {"first_name": "Someone", "email": "ADA@example.com"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["created"] is False and again.get_json()["first_name"] == "Ada"


@pytest.mark.parametrize("payload, field", [
    ({"first_name": "Ada", "email": "not-an-email"}, "email"),
    ({"first_name": "Ada", "phone": "12"}, "phone"),
    ({"first_name": "Ada"}, "email"),  # neither email nor phone
    ({"first_name": "", "email": "a@example.com"}, "first_name"),
    ({"email": "a@example.com"}, "first_name"),
    ({"first_name": "Ada", "email": "a@example.com", "birthday": {"day": 31, "month": 2}},
     "birthday_day"),
    ({"first_name": "Ada", "email": "a@example.com", "locale": "xx"}, "locale"),
])
def test_bad_customer_input_is_422_naming_the_field(api, payload, field):
    body = is_problem(api.post("/customers", payload), 422, "validation_error")
    assert field in [e["field"] for e in body["errors"]]


def test_get_includes_visit_count_stamps_and_tags(app, api):
    created = api.post("/customers", {"first_name": "Bo", "email": "bo@example.com"}).get_json()
    api.post("/visits", {"customer_id": created["id"], "stamps": 3, "amount": "7.00"})
    api.post(f"/customers/{created['id']}/tags", {"name": "Regular"})
    body = api.get(f"/customers/{created['id']}").get_json()
    assert body["visit_count"] == 1 and body["stamps"] == 3 and body["total_spent"] == "7.00"
    assert [t["name"] for t in body["tags"]] == ["Regular"]
    assert body["last_visit_at"].endswith("Z")


def test_find_by_email_phone_or_card_code(app, api):
    with app.app_context():
        from stampweb.models import Merchant

        merchant = db.session.get(Merchant, api.merchant_id)
        target = gen_customer(merchant, email="find@example.com", phone="+4915112345678")
        gen_customer(merchant)
        code = card_of(target).code
        target_id = target.id
    for query in ("email=FIND@example.com", "phone=%2B49%20151%2012345678",
                  f"card_code={code.lower()}"):
        data = api.get(f"/customers?{query}").get_json()["data"]
        assert [c["id"] for c in data] == [target_id], query
    assert api.get("/customers?email=nobody@example.com").get_json()["data"] == []
    body = is_problem(api.get("/customers?phone=abc"), 422)
    assert body["errors"][0]["field"] == "phone"


def test_list_is_paged_by_key(app, api):
    with app.app_context():
        from stampweb.models import Merchant

        merchant = db.session.get(Merchant, api.merchant_id)
        ids = [gen_customer(merchant).id for _ in range(5)]
    seen, after = [], 0
    while True:
        page = api.get(f"/customers?limit=2&after={after}").get_json()
        seen += [c["id"] for c in page["data"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == ids
    is_problem(api.get("/customers?limit=0"), 422)


def test_update_changes_only_what_is_sent_and_records_consent_source(app, api):
    created = api.post("/customers", {
        "first_name": "Cy", "last_name": "Young", "email": "cy@example.com",
        "birthday": {"day": 1, "month": 5}, "consent": {"email": True}}).get_json()
    response = api.patch(f"/customers/{created['id']}", {
        "first_name": "Cyrus", "consent": {"email": False, "wallet": True}})
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert body["first_name"] == "Cyrus" and body["last_name"] == "Young"
    assert body["birthday"] == {"day": 1, "month": 5, "year": None}
    assert body["consent"] == {"email": "withdrawn", "wallet": "granted", "reminders": "none"}
    with app.app_context(), tenant(api.merchant_id):
        sources = set(db.session.scalars(select(ConsentEvent.source)))
        assert sources == {"api"}
    cleared = api.patch(f"/customers/{created['id']}", {"birthday": None}).get_json()
    assert cleared["birthday"] is None
    is_problem(api.patch("/customers/999999", {"first_name": "X"}), 404)


def test_tag_and_untag_a_customer(api):
    created = api.post("/customers", {"first_name": "Di", "email": "di@example.com"}).get_json()
    tagged = api.post(f"/customers/{created['id']}/tags", {"name": "VIP"})
    assert tagged.status_code == 200
    [tag] = tagged.get_json()["tags"]
    untagged = api.delete(f"/customers/{created['id']}/tags/{tag['id']}")
    assert untagged.status_code == 200 and untagged.get_json()["tags"] == []
    is_problem(api.post(f"/customers/{created['id']}/tags", {"tag_id": 1, "name": "x"}), 422)
