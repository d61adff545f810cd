"""Webhooks out: events reach the merchant's URL signed, failures are retried with
back-off, and every attempt shows in the delivery log in settings."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import SimpleWorker
from sqlalchemy import select

from stampweb import webhooks
from stampweb.extensions import db, redis_client
from stampweb.models import WebhookDelivery
from stampweb.tasks.queues import QUEUES, get_queue, set_worker_app
from stampweb.tenancy import tenant

from .api_helpers import Api, make_key
from .conftest import unit_config
from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, login, owner_of


class Receiver:
    """A real HTTP server on 127.0.0.1 recording what it is sent; answers `status`."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def hook_app(tmp_path):
    from stampweb import create_app

    application = create_app(unit_config(tmp_path, WEBHOOK_ALLOW_PRIVATE_URLS=True))
    with application.app_context():
        db.create_all()
    yield application
    with application.app_context():
        db.engine.dispose()


def run_jobs(app):
    set_worker_app(app)
    with app.app_context():
        connection = redis_client()
        SimpleWorker([get_queue(q, connection) for q in QUEUES],
                     connection=connection).work(burst=True)


def test_signature_verifies_and_tampering_or_age_breaks_it():
    body = b'{"id":"evt_1"}'
    header = webhooks.sign("whsec_test", body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert webhooks.verify("whsec_test", header, body, now=1_700_000_100)
    assert not webhooks.verify("whsec_test", header, body + b" ", now=1_700_000_100)
    assert not webhooks.verify("whsec_other", header, body, now=1_700_000_100)
    assert not webhooks.verify("whsec_test", header, body, now=1_700_000_000 + 3600)


def test_a_visit_through_the_api_is_delivered_signed(hook_app, receiver):
    """visit.recorded and reward.issued reach the URL; the log says delivered."""
    with hook_app.app_context():
        merchant = gen_merchant()
        customer = gen_customer(merchant)
        code, merchant_id = card_of(customer).code, merchant.id
        endpoint = webhooks.create_endpoint(merchant_id, receiver.url,
                                            ["visit.recorded", "reward.issued"])
        secret = endpoint.secret
        key = make_key(merchant)
    response = Api(hook_app.test_client(), key).post("/visits", {"card_code": code,
                                                                 "stamps": 10})
    assert response.status_code == 201
    run_jobs(hook_app)
    events = {}
    for headers, body in receiver.requests:
        assert webhooks.verify(secret, headers["Stampweb-Signature"], body)
        payload = json.loads(body)
        assert headers["Stampweb-Event-Id"] == payload["id"]
        events[payload["type"]] = payload["data"]
    assert set(events) == {"visit.recorded", "reward.issued"}
    assert events["visit.recorded"]["visit"]["id"] == response.get_json()["id"]
    assert events["visit.recorded"]["card"]["code"] == code
    assert events["reward.issued"]["voucher"]["kind"] == "reward"
    with hook_app.app_context(), tenant(merchant_id):
        statuses = db.session.scalars(select(WebhookDelivery.status)).all()
        assert statuses == ["delivered", "delivered"]


def test_joined_redeemed_and_unsubscribed_events_are_sent(hook_app, receiver):
    with hook_app.app_context():
        merchant = gen_merchant()
        merchant_id = merchant.id
        webhooks.create_endpoint(merchant_id, receiver.url, list(webhooks.WEBHOOK_EVENTS))
        key = make_key(merchant)
    api = Api(hook_app.test_client(), key)
    created = api.post("/customers", {"first_name": "Ed", "email": "ed@example.com",
                                      "consent": {"wallet": True}}).get_json()
    api.patch(f"/customers/{created['id']}", {"consent": {"wallet": False}})
    with hook_app.app_context(), tenant(merchant_id):
        from stampweb.loyalty import vouchers

        voucher_id = vouchers.issue(merchant_id, created["id"], kind="manual", title="x").id
        db.session.commit()
    api.post(f"/vouchers/{voucher_id}/redeem")
    run_jobs(hook_app)
    types = sorted(json.loads(body)["type"] for _, body in receiver.requests)
    assert types == ["customer.joined", "customer.unsubscribed", "voucher.redeemed"]


def test_failures_are_retried_with_back_off_then_marked_failed(hook_app):
    """500s: each attempt is logged with its status; after the last one, failed."""
    failing = Receiver(status=500)
    try:
        with hook_app.app_context():
            merchant = gen_merchant()
            customer = gen_customer(merchant)
            webhooks.create_endpoint(merchant.id, failing.url, ["customer.joined"])
            [delivery_id] = webhooks.dispatch(merchant.id, "customer.joined", customer.id,
                                              "evt-1", "2026-01-01T00:00:00Z")
            delays = []
            for _ in range(webhooks.MAX_ATTEMPTS):
                attempt = webhooks.deliver(merchant.id, delivery_id)
                delays.append(attempt.retry_in)
            assert delays == [*webhooks.RETRY_DELAYS, None]
            assert webhooks.deliver(merchant.id, delivery_id) is None  # nothing more to do
            with tenant(merchant.id):
                delivery = db.session.get(WebhookDelivery, delivery_id)
                assert delivery.status == "failed" and delivery.response_status == 500
                assert delivery.attempts == webhooks.MAX_ATTEMPTS
            # The retries were scheduled in RQ, not slept through.
            assert get_queue("default").scheduled_job_registry.count == len(delays) - 1
            # Dispatching the same event again adds no second delivery.
            assert webhooks.dispatch(merchant.id, "customer.joined", customer.id, "evt-1",
                                     "2026-01-01T00:00:00Z") == []
    finally:
        failing.stop()
    assert len(failing.requests) == webhooks.MAX_ATTEMPTS


def test_private_addresses_are_refused_unless_allowed(app):
    with app.app_context():
        app.config["WEBHOOK_ALLOW_PRIVATE_URLS"] = False
        merchant = gen_merchant()
        customer = gen_customer(merchant)
        webhooks.create_endpoint(merchant.id, "http://127.0.0.1:9/hook", ["customer.joined"])
        [delivery_id] = webhooks.dispatch(merchant.id, "customer.joined", customer.id, "e",
                                          "2026-01-01T00:00:00Z")
        attempt = webhooks.deliver(merchant.id, delivery_id)
        assert not attempt.delivered and "non-public" in attempt.error


def test_no_endpoint_means_no_job(app, client):
    with app.app_context():
        merchant = gen_merchant()
        code = card_of(gen_customer(merchant)).code
        key = make_key(merchant)
    assert Api(client, key).post("/visits", {"card_code": code}).status_code == 201
    with app.app_context():
        assert get_queue("default").count == 0


def test_settings_make_a_key_once_add_an_endpoint_and_show_the_log(app, client):
    with app.app_context():
        merchant = gen_merchant()
        other = gen_merchant()
        theirs = webhooks.create_endpoint(other.id, "https://example.com/h", ["visit.recorded"])
        login(client, owner_of(merchant).email)
        theirs_id, merchant_id = theirs.id, merchant.id
    page = client.get("/admin/settings/api")
    token = csrf_token_from(page.text)
    made = client.post("/admin/settings/api/keys", data={"csrf_token": token, "name": "Till",
                                                           "scope": "read"})
    key = made.text.split('class="api-key-value">', 1)[1].split("<", 1)[0]
    assert key.startswith("sw_live_")
    assert key not in client.get("/admin/settings/api").text  # shown once
    assert Api(client, key).get("/tags").status_code == 200
    bad = client.post("/admin/settings/api/webhooks", data={
        "csrf_token": token, "url": "ftp://x", "events": ["visit.recorded"]})
    assert bad.status_code == 422 and "ftp://x" in bad.text and "https://" in bad.text
    added = client.post("/admin/settings/api/webhooks", data={
        "csrf_token": token, "url": "https://pos.example.com/hook",
        "events": ["visit.recorded", "customer.joined"]})
    assert added.status_code == 200 and "whsec_" in added.text
    with app.app_context():
        [endpoint] = webhooks.list_endpoints(merchant_id)
        endpoint_id = endpoint.id
        webhooks.dispatch(merchant_id, "customer.joined", 1, "evt-x", "2026-01-01T00:00:00Z")
    log = client.get(f"/admin/settings/api/webhooks/{endpoint_id}")
    assert log.status_code == 200 and "customer.joined" in log.text
    fragment = client.get(f"/admin/settings/api/webhooks/{endpoint_id}",
                          headers={"HX-Request": "true"})
    assert "<html" not in fragment.text and "customer.joined" in fragment.text
    assert client.get(f"/admin/settings/api/webhooks/{theirs_id}").status_code == 404
    assert client.post(f"/admin/settings/api/webhooks/{theirs_id}/delete",
                       data={"csrf_token": token}).status_code == 404
    with app.app_context():
        from stampweb.api import auth

        [key_id] = [row.id for row in auth.list_keys(merchant_id)]
    revoked = client.post(f"/admin/settings/api/keys/{key_id}/revoke",
                          data={"csrf_token": token})
    assert revoked.status_code == 302
    assert Api(client, key).get("/tags").status_code == 401
