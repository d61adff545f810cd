"""What the request's merchant has set up (stampweb/merchant_facts.py): read with the
logged-in user, it spares each stamp the wallet and webhook look-ups, and a wallet or
webhook set up elsewhere is still seen by the next request."""

from __future__ import annotations

from sqlalchemy import event

from stampweb import merchant_facts, webhooks
from stampweb.extensions import db
from stampweb.models import Merchant, WalletSettings, WebhookEndpoint
from stampweb.tasks.queues import get_queue
from stampweb.tenancy import tenant, unscoped
from stampweb.wallet.credentials import could_be_ready

from .factories import card_of, gen_customer, gen_merchant, gen_user, login
from .test_staff_page import HTMX, _stamp_post


def _facts(merchant_id: int) -> tuple[bool, bool]:
    db.session.remove()  # a fresh read, as the next request makes
    with unscoped():
        merchant = db.session.get(Merchant, merchant_id)
        return merchant.has_wallet_settings, merchant.has_active_webhooks


def test_the_merchant_row_says_whether_it_has_wallet_settings_and_an_active_webhook(app):
    with app.app_context():
        merchant = gen_merchant()
        other = gen_merchant()
        merchant_id = merchant.id
        assert _facts(merchant_id) == (False, False)
        with tenant(merchant_id):
            db.session.add(WalletSettings(merchant_id=merchant_id, google_issuer_id="338"))
            endpoint = webhooks.create_endpoint(merchant_id, "https://hooks.example.com/in",
                                                ["visit.recorded"])
            endpoint_id = endpoint.id
            db.session.commit()
        assert _facts(merchant_id) == (True, True)
        assert _facts(other.id) == (False, False)  # another merchant's rows do not count
        with tenant(merchant_id):
            db.session.get(WebhookEndpoint, endpoint_id).active = False
            db.session.commit()
        assert _facts(merchant_id) == (True, False)


def test_the_listeners_use_the_facts_only_for_the_merchant_they_were_read_for(app):
    with app.app_context():
        merchant = gen_merchant()
        other = gen_merchant()
        with tenant(other.id):
            db.session.add(WalletSettings(merchant_id=other.id, google_issuer_id="338"))
            db.session.commit()
        merchant_id, other_id = merchant.id, other.id
        statements: list[str] = []
        event.listen(db.engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_a: statements.append(statement))
        with app.test_request_context():
            merchant_facts.remember(db.session.get(Merchant, merchant_id))
            statements.clear()
            assert merchant_facts.known(other_id) is None
            assert could_be_ready(merchant_id) is False
            assert statements == []  # answered from the facts
            assert could_be_ready(other_id) is True  # asked in SQL
            assert len(statements) == 1
        assert merchant_facts.known(merchant_id) is None  # outside a request: SQL


def test_a_stamp_reaches_a_webhook_set_up_after_the_staff_member_logged_in(app, client):
    with app.app_context():
        merchant = gen_merchant()
        gen_user(merchant, "staff", "barista@facts.test")
        code = card_of(gen_customer(merchant)).code
        merchant_id = merchant.id
    login(client, "barista@facts.test")
    queue_count = lambda: get_queue("default").count  # noqa: E731
    with app.app_context():
        assert "Stamped: 1 of" in _stamp_post(client, code, headers=HTMX).text
        assert queue_count() == 0  # no endpoint: no job
        with tenant(merchant_id):
            endpoint = webhooks.create_endpoint(merchant_id, "https://hooks.example.com/in",
                                                ["visit.recorded"])
            endpoint_id = endpoint.id
            db.session.commit()
        db.session.remove()
    with app.app_context():
        # A second card: the first one is in its cooldown.
        with unscoped():
            code = card_of(gen_customer(db.session.get(Merchant, merchant_id))).code
        assert "Stamped: 1 of" in _stamp_post(client, code, headers=HTMX).text
        assert queue_count() == 1
        with tenant(merchant_id):
            db.session.get(WebhookEndpoint, endpoint_id).active = False
            db.session.commit()
            code = card_of(gen_customer(db.session.get(Merchant, merchant_id))).code
        db.session.remove()
    with app.app_context():
        assert "Stamped: 1 of" in _stamp_post(client, code, headers=HTMX).text
        assert get_queue("default").count == 1  # the paused endpoint gets nothing
