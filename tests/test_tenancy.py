"""Tenants never leak: scoped queries fail closed, and no route serves another
merchant's rows to a logged-in user."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.models import (
    ApiKey,
    Campaign,
    Card,
    Customer,
    Location,
    MailboxMessage,
    Message,
    Segment,
    Tag,
    User,
    Visit,
    Voucher,
    WebhookDelivery,
    WebhookEndpoint,
)
from stampweb.tenancy import TenantNotSet, tenant, unscoped

from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, login


def test_query_on_tenant_data_without_a_tenant_raises(app):
    with app.app_context():
        with pytest.raises(TenantNotSet):
            db.session.scalars(select(Customer)).all()


def test_bulk_update_without_a_tenant_raises(app):
    with app.app_context():
        with pytest.raises(TenantNotSet):
            db.session.execute(db.update(Customer).values(first_name="x"))


def test_tenant_scope_hides_other_merchants_rows(app):
    with app.app_context():
        a, b = gen_merchant(), gen_merchant()
        gen_customer(a, first_name="Alice")
        gen_customer(b, first_name="Bob")
        with tenant(a.id):
            names = [c.first_name for c in db.session.scalars(select(Customer))]
        assert names == ["Alice"]
        with unscoped():
            assert db.session.query(Customer).count() == 2


# Every URL argument a merchant-side route takes, and how to find merchant B's value.
def _ids_of(merchant_id: int) -> dict:
    with tenant(merchant_id):
        customer = db.session.scalars(select(Customer)).first()
        card = db.session.scalars(select(Card)).first()
        return {
            "user_id": db.session.scalars(select(User)).first().id,
            "customer_id": customer.id,
            "card_id": card.id,
            "code": card.code,
            "location_id": db.session.scalars(select(Location)).first().id,
            "message_id": db.session.scalars(select(MailboxMessage)).first().id,
            "outbox_id": db.session.scalars(select(Message)).first().id,
            "campaign_id": db.session.scalars(select(Campaign)).first().id,
            "visit_id": db.session.scalars(select(Visit)).first().id,
            "voucher_id": db.session.scalars(select(Voucher)).first().id,
            "segment_id": db.session.scalars(select(Segment)).first().id,
            "tag_id": db.session.scalars(select(Tag)).first().id,
            "key_id": db.session.scalars(select(ApiKey)).first().id,
            "endpoint_id": db.session.scalars(select(WebhookEndpoint)).first().id,
            "delivery_id": db.session.scalars(select(WebhookDelivery)).first().id,
        }


# Routes that are public by design: their argument is an unguessable token or a
# public slug, and the page shows that token's own data to whoever holds it.
PUBLIC_ENDPOINTS = {"static"}
# Routes keyed by a fixed name, not an id, that act on the user's own merchant.
OWN_MERCHANT_ENDPOINTS = {"merchant.automation_edit", "merchant.automation_switch"}
PUBLIC_PREFIXES = (
    "/join/", "/card/", "/prefs/", "/u/", "/confirm/", "/wallet/", "/api/", "/brand/",
)


def _seed_everything(merchant) -> None:
    customer = gen_customer(merchant)
    card = card_of(customer)
    with tenant(merchant.id):
        location = db.session.scalars(select(Location)).first()
        visit = Visit(merchant_id=merchant.id, customer_id=customer.id, card_id=card.id,
                      location_id=location.id, stamps=1)
        db.session.add(visit)
        db.session.add(Voucher(merchant_id=merchant.id, customer_id=customer.id,
                               card_id=card.id, title="Coffee"))
        db.session.add(MailboxMessage(merchant_id=merchant.id, to_address="x@example.com",
                                      subject="Hello", raw=b"Subject: Hello\r\n\r\nHi"))
        db.session.add(Segment(merchant_id=merchant.id, name="Regulars", rules={}))
        db.session.add(Tag(merchant_id=merchant.id, name="vip"))
        campaign = Campaign(merchant_id=merchant.id, name="Spring")
        db.session.add(campaign)
        db.session.flush()
        db.session.add(Message(merchant_id=merchant.id, campaign_id=campaign.id,
                               customer_id=customer.id, channel="email"))
        db.session.add(ApiKey(merchant_id=merchant.id, name="POS", prefix=f"sw_{merchant.id}",
                              key_hash=f"{merchant.id:064d}", scope="write"))
        endpoint = WebhookEndpoint(merchant_id=merchant.id, url="https://93.184.216.34/hook",
                                   secret="s" * 32, events=["visit.recorded"])
        db.session.add(endpoint)
        db.session.flush()
        db.session.add(WebhookDelivery(merchant_id=merchant.id, endpoint_id=endpoint.id,
                                       event="visit.recorded", event_id="e1"))
        db.session.commit()


def test_every_route_answers_404_for_another_merchants_ids(app, client):
    """Merchant A's owner tries every merchant-side route with merchant B's ids."""
    with app.app_context():
        a, b = gen_merchant("alpha"), gen_merchant("bravo")
        _seed_everything(a)
        _seed_everything(b)
        b_ids = _ids_of(b.id)
    login(client, "owner@alpha.test")
    token = csrf_token_from(client.get("/admin/").text)
    checked = []
    for rule in app.url_map.iter_rules():
        if not rule.arguments or rule.endpoint in PUBLIC_ENDPOINTS | OWN_MERCHANT_ENDPOINTS:
            continue
        if rule.rule.startswith(PUBLIC_PREFIXES):
            continue
        unknown = rule.arguments - b_ids.keys()
        assert not unknown, (
            f"{rule.rule} takes {unknown}: teach this test how to find merchant B's value"
        )
        url = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: str(b_ids[m.group(1)]), rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method == "GET":
                response = client.get(url)
            else:
                response = client.open(url, method=method, data={"csrf_token": token},
                                       headers={"X-CSRFToken": token})
            assert response.status_code == 404, f"{method} {url} -> {response.status_code}"
            checked.append(f"{method} {rule.rule}")
    assert checked, "no merchant-side route with ids was found"
