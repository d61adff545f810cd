"""Vouchers, segments, tags and campaigns through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stampweb.extensions import db
from stampweb.loyalty import vouchers
from stampweb.models import CONSENT_GRANTED, utcnow
from stampweb.tenancy import tenant

from .api_helpers import Api, is_problem, make_key
from .factories import gen_customer, gen_merchant


@pytest.fixture
def api(app, client):
    with app.app_context():
        merchant = gen_merchant()
        customer = gen_customer(merchant, email_consent=CONSENT_GRANTED,
                               email_confirmed_at=utcnow())
        other = gen_customer(merchant)
        api = Api(client, make_key(merchant))
        api.merchant_id, api.customer_id, api.other_id = merchant.id, customer.id, other.id
        return api


def _voucher(app, api, customer_id=None, **kwargs) -> int:
    with app.app_context(), tenant(api.merchant_id):
        voucher = vouchers.issue(api.merchant_id, customer_id or api.customer_id,
                                 kind="manual", title="Free cake", **kwargs)
        db.session.commit()
        return voucher.id


def test_vouchers_are_listed_by_customer_and_usable(app, api):
    usable = _voucher(app, api)
    expired = _voucher(app, api, expires_at=utcnow() - timedelta(days=1))
    _voucher(app, api, customer_id=api.other_id)
    data = api.get(f"/vouchers?customer_id={api.customer_id}").get_json()["data"]
    assert [v["id"] for v in data] == [usable, expired]
    data = api.get(f"/vouchers?customer_id={api.customer_id}&status=usable").get_json()["data"]
    assert [v["id"] for v in data] == [usable] and data[0]["usable"] is True
    code = data[0]["code"]
    assert [v["id"] for v in api.get(f"/vouchers?code={code}").get_json()["data"]] == [usable]
    assert api.get(f"/vouchers/{usable}").get_json()["title"] == "Free cake"


def test_a_voucher_is_redeemed_once(app, api):
    voucher_id = _voucher(app, api)
    first = api.post(f"/vouchers/{voucher_id}/redeem")
    assert first.status_code == 200 and first.get_json()["status"] == "redeemed"
    is_problem(api.post(f"/vouchers/{voucher_id}/redeem"), 409, "already_redeemed")
    is_problem(api.post("/vouchers/424242/redeem"), 404)
    expired = _voucher(app, api, expires_at=utcnow() - timedelta(days=1))
    is_problem(api.post(f"/vouchers/{expired}/redeem", {}), 409, "expired")
    is_problem(api.post(f"/vouchers/{_voucher(app, api)}/redeem", {"location_id": 999}), 422)


def test_segment_count_counts_and_names_bad_rules(api):
    rules = {"match": "all", "groups": [{"match": "all", "conditions": [
        {"field": "consent", "op": "granted", "value": "email"}]}]}
    assert api.post("/segments/count", {"rules": rules}).get_json() == {"count": 1}
    assert api.post("/segments/count", {"rules": {}}).get_json() == {"count": 2}
    bad = {"groups": [{"conditions": [{"field": "visit_count", "op": "gt", "value": "many"}]}]}
    body = is_problem(api.post("/segments/count", {"rules": bad}), 422)
    assert body["errors"][0]["field"].startswith("rules.groups.0.conditions.0")


def test_tags_are_listed_and_created(api):
    created = api.post("/tags", {"name": "Regulars"})
    assert created.status_code == 201 and created.get_json()["kind"] == "manual"
    body = is_problem(api.post("/tags", {"name": "regulars"}), 422)
    assert body["errors"][0]["field"] == "name"
    assert [t["name"] for t in api.get("/tags").get_json()["data"]] == ["Regulars"]


def _campaign(api, **fields):
    payload = {"name": "Weekend", "channels": "email", "subject": "Hi {first_name|friend}",
               "body_markdown": "Two for one", "audience": {"type": "all"}, **fields}
    return api.post("/campaigns", payload)


def test_campaign_versions_in_other_languages(app, api):
    """variants: one per shipped language; a half-written email version is refused
    field by field, and nothing is saved."""
    from stampweb.models.campaigns import Campaign

    ru = {"subject": "Привет", "body_markdown": "Два по цене одного"}
    response = _campaign(api, variants={"ru": ru, "he": {}})
    assert response.status_code == 201, response.data
    with app.app_context(), tenant(api.merchant_id):
        assert db.session.get(Campaign, response.get_json()["id"]).variants == {"ru": ru}
    body = is_problem(_campaign(api, name="Half", variants={"fa": {"subject": "سلام"}}), 422)
    assert [e["field"] for e in body["errors"]] == ["variants.fa.body_markdown"]
    is_problem(_campaign(api, name="Klingon", variants={"tlh": ru}), 422)
    with app.app_context(), tenant(api.merchant_id):
        assert db.session.query(Campaign).count() == 1


def test_campaign_create_schedule_and_cancel(api):
    response = _campaign(api)
    assert response.status_code == 201, response.data
    campaign = response.get_json()
    assert campaign["status"] == "draft" and campaign["counts"]["total"] == 0
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    scheduled = api.post(f"/campaigns/{campaign['id']}/schedule", {"at": at}).get_json()
    assert scheduled["status"] == "scheduled" and scheduled["scheduled_at"]
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    is_problem(api.post(f"/campaigns/{campaign['id']}/schedule", {"at": past}), 422)
    is_problem(api.post(f"/campaigns/{campaign['id']}/schedule",
                        {"at": "2030-01-01T10:00:00"}), 422)  # no offset
    assert api.post(f"/campaigns/{campaign['id']}/cancel").get_json()["status"] == "cancelled"
    is_problem(api.post(f"/campaigns/{campaign['id']}/send"), 409, "invalid_state")
    listed = api.get("/campaigns").get_json()["data"]
    assert [c["id"] for c in listed] == [campaign["id"]]


def test_campaign_send_then_pause_resume_and_status_counts(app, api):
    from .test_campaign_sending import run_jobs_inline

    campaign = _campaign(api).get_json()
    sending = api.post(f"/campaigns/{campaign['id']}/send").get_json()
    assert sending["status"] == "sending"
    assert api.post(f"/campaigns/{campaign['id']}/pause").get_json()["status"] == "paused"
    is_problem(api.post(f"/campaigns/{campaign['id']}/pause"), 409)
    assert api.post(f"/campaigns/{campaign['id']}/resume").get_json()["status"] == "sending"
    run_jobs_inline(app)
    status = api.get(f"/campaigns/{campaign['id']}").get_json()
    assert status["status"] == "sent"
    assert status["counts"]["sent"] == 1 and status["counts"]["skipped:no_consent"] == 1


@pytest.mark.parametrize("fields, field", [
    ({"subject": ""}, "subject"),
    ({"channels": "wallet"}, "wallet_text"),
    ({"body_markdown": "Hi {frist_name}"}, "body_markdown"),
    ({"audience": {"type": "segment", "segment_id": 999}}, "audience.segment_id"),
    ({"audience": {"type": "tag"}}, "audience.tag_id"),
    ({"audience": {"type": "rules", "rules": {"match": "some"}}}, "audience.rules.match"),
])
def test_bad_campaigns_are_422_naming_the_field(api, fields, field):
    body = is_problem(_campaign(api, **fields), 422)
    assert field in [e["field"] for e in body["errors"]]


def test_campaign_for_a_tag_reaches_its_members(app, api):
    tag = api.post("/tags", {"name": "VIP"}).get_json()
    api.post(f"/customers/{api.customer_id}/tags", {"tag_id": tag["id"]})
    campaign = _campaign(api, audience={"type": "tag", "tag_id": tag["id"]}).get_json()
    assert campaign["audience"]["tag_id"] == tag["id"]
    from .test_campaign_sending import run_jobs_inline

    api.post(f"/campaigns/{campaign['id']}/send")
    run_jobs_inline(app)
    counts = api.get(f"/campaigns/{campaign['id']}").get_json()["counts"]
    assert counts["total"] == 1 and counts["sent"] == 1
