"""POST /api/v1/visits: a POS stamps cards, and a retried request never stamps twice."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from stampweb.extensions import db
from stampweb.models import Card, Customer, Program, Visit
from stampweb.tenancy import tenant

from .api_helpers import Api, is_problem, make_key
from .factories import card_of, gen_customer, gen_merchant


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant()
        customer = gen_customer(merchant)
        card = card_of(customer)
        key = make_key(merchant)
        return {"merchant_id": merchant.id, "customer_id": customer.id, "code": card.code,
                "card_id": card.id, "key": key}


def visits(app, merchant_id) -> int:
    with app.app_context(), tenant(merchant_id):
        return db.session.scalar(select(func.count(Visit.id)))


def test_visit_by_card_code_answers_201_with_the_cards_new_state(app, client, shop):
    """Stamps and amount are recorded; the answer has the card's balance and the customer's."""
    api = Api(client, shop["key"])
    response = api.post("/visits", {"card_code": shop["code"], "stamps": 2, "amount": "4.50"})
    assert response.status_code == 201, response.data
    body = response.get_json()
    assert body["card"]["code"] == shop["code"]
    assert body["card"]["stamps"] == 2 and body["stamps_added"] == 2
    assert body["amount"] == "4.50" and body["vouchers_issued"] == []
    with app.app_context(), tenant(shop["merchant_id"]):
        visit = db.session.scalar(select(Visit))
        assert visit.source == "api" and str(visit.amount) == "4.50"
        customer = db.session.get(Customer, shop["customer_id"])
        assert customer.visit_count == 1 and str(customer.total_spent) == "4.50"


def test_visit_by_customer_id_that_fills_the_card_issues_a_reward(app, client, shop):
    """The voucher the stamps issued comes back in the answer."""
    with app.app_context(), tenant(shop["merchant_id"]):
        db.session.scalar(select(Program)).stamps_required = 3
        db.session.commit()
    response = Api(client, shop["key"]).post(
        "/visits", {"customer_id": shop["customer_id"], "stamps": 3})
    assert response.status_code == 201, response.data
    body = response.get_json()
    assert body["card"]["stamps"] == 0 and body["card"]["rewards_earned"] == 1
    [voucher] = body["vouchers_issued"]
    assert voucher["kind"] == "reward" and voucher["status"] == "active" and voucher["usable"]


@pytest.mark.parametrize("payload, field", [
    ({"stamps": 1}, "body"),  # neither card_code nor customer_id
    ({"card_code": "X", "stamps": 0}, "stamps"),
    ({"card_code": "X", "stamps": 21}, "stamps"),
    ({"card_code": "X", "amount": "4.505"}, "amount"),
    ({"card_code": "X", "amount": "-1"}, "amount"),
    ({"card_code": "X", "amount": 4.5}, "amount"),
    ({"card_code": "X", "stamps": "2"}, "stamps"),
    ({"card_code": "X", "colour": "red"}, "colour"),
])
def test_bad_visit_input_is_422_with_the_field_named(client, shop, payload, field):
    body = is_problem(Api(client, shop["key"]).post("/visits", payload), 422, "validation_error")
    assert [e["field"] for e in body["errors"]] == [field]
    assert all(e["message"] for e in body["errors"])


def test_unknown_card_is_404(client, shop):
    body = is_problem(Api(client, shop["key"]).post("/visits", {"card_code": "NOPE2345"}), 404)
    assert body["errors"][0]["field"] == "card_code"


def test_not_json_is_400_and_wrong_media_type_is_415(client, shop):
    headers = {"Authorization": f"Bearer {shop['key']}", "Content-Type": "application/json"}
    is_problem(client.post("/api/v1/visits", data="{oops", headers=headers), 400, "invalid_json")
    is_problem(client.post("/api/v1/visits", data="[1]", headers=headers), 400, "invalid_json")
    is_problem(client.post("/api/v1/visits", data="card_code=X",
                           headers={"Authorization": f"Bearer {shop['key']}"}), 415)


def test_second_stamp_within_the_cooldown_is_409_with_retry_after(client, shop):
    api = Api(client, shop["key"])
    assert api.post("/visits", {"card_code": shop["code"]}).status_code == 201
    response = api.post("/visits", {"card_code": shop["code"]})
    body = is_problem(response, 409, "cooldown")
    assert int(response.headers["Retry-After"]) >= 1 and body["retry_after_seconds"] >= 1


def test_same_idempotency_key_and_body_replays_the_first_answer(app, client, shop):
    """The retry gets the identical answer, marked replayed, and no second visit."""
    api = Api(client, shop["key"])
    payload = {"card_code": shop["code"], "stamps": 1, "amount": "3.20"}
    first = api.post("/visits", payload, idempotency_key="pos-42-receipt-1001")
    again = api.post("/visits", payload, idempotency_key="pos-42-receipt-1001")
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert visits(app, shop["merchant_id"]) == 1


def test_same_key_with_a_different_body_is_refused(app, client, shop):
    api = Api(client, shop["key"])
    api.post("/visits", {"card_code": shop["code"]}, idempotency_key="receipt-77")
    response = api.post("/visits", {"card_code": shop["code"], "stamps": 5},
                        idempotency_key="receipt-77")
    body = is_problem(response, 422, "idempotency_key_reused")
    assert "different request" in body["detail"]
    assert visits(app, shop["merchant_id"]) == 1


def test_a_refusal_is_replayed_too(client, shop):
    """The stored answer is whatever the first request got, an error included."""
    api = Api(client, shop["key"])
    api.post("/visits", {"card_code": shop["code"]})
    first = api.post("/visits", {"card_code": shop["code"]}, idempotency_key="retry-me-1")
    again = api.post("/visits", {"card_code": shop["code"]}, idempotency_key="retry-me-1")
    assert first.status_code == again.status_code == 409
    assert again.get_json() == first.get_json()


def test_malformed_idempotency_key_is_400(client, shop):
    response = Api(client, shop["key"]).post("/visits", {"card_code": shop["code"]},
                                             idempotency_key="x" * 256)
    is_problem(response, 400, "bad_idempotency_key")


def _fire_concurrently(app, key, payload, idempotency_key, n=8):
    barrier = threading.Barrier(n)
    results: list = []

    def one():
        client = app.test_client()
        barrier.wait()
        response = client.post("/api/v1/visits", json=payload, headers={
            "Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key})
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_retries_stamp_once_on_sqlite(app, shop):
    """Eight identical POSTs at the same moment with one key: one visit, eight same answers."""
    payload = {"card_code": shop["code"], "stamps": 2}
    results = _fire_concurrently(app, shop["key"], payload, "till-3-sale-555")
    assert [status for status, _ in results] == [201] * 8
    assert len({body["id"] for _, body in results}) == 1
    assert visits(app, shop["merchant_id"]) == 1
    with app.app_context(), tenant(shop["merchant_id"]):
        assert db.session.get(Card, shop["card_id"]).stamps == 2


@pytest.mark.integration
def test_concurrent_retries_stamp_once_on_postgresql(pg_app):
    with pg_app.app_context():
        merchant = gen_merchant()
        customer = gen_customer(merchant)
        code, card_id, merchant_id = card_of(customer).code, card_of(customer).id, merchant.id
        key = make_key(merchant)
    results = _fire_concurrently(pg_app, key, {"card_code": code, "stamps": 2}, "pg-sale-1", n=10)
    assert [status for status, _ in results] == [201] * 10
    assert len({body["id"] for _, body in results}) == 1
    assert visits(pg_app, merchant_id) == 1
    with pg_app.app_context(), tenant(merchant_id):
        assert db.session.get(Card, card_id).stamps == 2


def test_stored_answers_are_purged_nightly_after_their_retention(app, client, shop):
    """`rq cron` runs the purge nightly; old answers go, a fresh one stays and still replays."""
    from datetime import timedelta

    import fakeredis
    from rq.cron import CronScheduler
    from sqlalchemy import update

    from stampweb.api.idempotency import RETENTION
    from stampweb.models import IdempotencyRecord, utcnow
    from stampweb.tasks.maintenance import purge_idempotency_records

    scheduler = CronScheduler(connection=fakeredis.FakeRedis())
    scheduler.load_config_from_file("stampweb.tasks.cron")
    names = {job.func_name: job for job in scheduler.get_jobs()}
    assert names["stampweb.tasks.maintenance.purge_idempotency_records"].cron == "41 3 * * *"

    api = Api(client, shop["key"])
    api.post("/visits", {"card_code": shop["code"]}, idempotency_key="old-receipt")
    api.post("/visits", {"card_code": shop["code"]}, idempotency_key="new-receipt")
    with app.app_context(), tenant(shop["merchant_id"]):
        db.session.execute(update(IdempotencyRecord)
                           .where(IdempotencyRecord.key == "old-receipt")
                           .values(created_at=utcnow() - RETENTION - timedelta(hours=1)))
        db.session.commit()
    with app.app_context():
        assert purge_idempotency_records() == 1
    with app.app_context(), tenant(shop["merchant_id"]):
        keys = db.session.scalars(select(IdempotencyRecord.key)).all()
    assert keys == ["new-receipt"]
    again = api.post("/visits", {"card_code": shop["code"]}, idempotency_key="new-receipt")
    assert again.headers["Idempotent-Replayed"] == "true"
