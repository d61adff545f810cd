"""Google Wallet: class and object over the REST API, the save link, PATCH on every
change, and campaign messages within Google's three notifications per 24 hours."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from rq import SimpleWorker

from stampweb import events
from stampweb.extensions import db, redis_client
from stampweb.models import Card, WalletGoogleNotification, WalletPass
from stampweb.tasks.queues import QUEUES, get_queue
from stampweb.tenancy import tenant, unscoped
from stampweb.wallet import google, updates

from .apns_standin import GoogleStandIn
from .factories import card_of, gen_customer, gen_merchant
from .wallet_helpers import ISSUER_ID, shared_credentials, wallet_app


@pytest.fixture
def creds(tmp_path_factory):
    return shared_credentials(tmp_path_factory)


@pytest.fixture
def google_server():
    with GoogleStandIn() as server:
        yield server
        google.close_clients()


@pytest.fixture
def app(tmp_path, creds, google_server):
    account = creds.write_service_account(google_server.token_uri)
    application = wallet_app(
        tmp_path, None,
        GOOGLE_WALLET_ISSUER_ID=ISSUER_ID,
        GOOGLE_WALLET_SERVICE_ACCOUNT_FILE=str(account),
        GOOGLE_WALLET_API_URL=google_server.api_url,
    )
    yield application
    with application.app_context():
        db.engine.dispose()


def run_jobs(app) -> None:
    with app.app_context():
        connection = redis_client()
        SimpleWorker([get_queue(n, connection) for n in QUEUES], connection=connection).work(
            burst=True)


def _saved_card(app, google_server) -> Card:
    """A card whose customer pressed "Save to Google Wallet"."""
    with app.app_context():
        card = card_of(gen_customer(gen_merchant(name="Bean There")))
    response = app.test_client().get(f"/wallet/google/{card.token}")
    assert response.status_code == 303
    return card


def test_save_link_creates_class_and_object_then_signs_a_skinny_jwt(app, creds, google_server):
    """The button inserts the merchant's loyalty class and the card's object, then sends the
    customer to pay.google.com with a JWT that verifies with the service account's key and
    names only the object id."""
    with app.app_context():
        merchant = gen_merchant(name="Bean There", brand_color="#336699")
        merchant_id = merchant.id
        card = card_of(gen_customer(merchant))
    response = app.test_client().get(f"/wallet/google/{card.token}")
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("https://pay.google.com/gp/v/save/")
    token = location.rsplit("/", 1)[1]
    claims = jwt.decode(token, creds.google_key.public_key(), algorithms=["RS256"],
                        audience="google")
    assert claims["iss"] == creds.client_email
    assert claims["typ"] == "savetowallet"
    assert claims["origins"] == ["https://cafe.test"]
    object_id = f"{ISSUER_ID}.{card.wallet_serial}"
    assert claims["payload"] == {"loyaltyObjects": [{"id": object_id}]}
    assert len(token) <= 1800

    loyalty_class = google_server.state.classes[f"{ISSUER_ID}.stampweb-merchant-{merchant_id}"]
    assert loyalty_class["issuerName"] == "Bean There"
    assert loyalty_class["hexBackgroundColor"] == "#336699"
    assert loyalty_class["programLogo"]["sourceUri"]["uri"] == (
        f"https://cafe.test/wallet/logo/{merchant_id}.png")
    obj = google_server.state.objects[object_id]
    assert obj["classId"] == loyalty_class["id"]
    assert obj["loyaltyPoints"]["balance"] == {"int": 0}
    assert obj["barcode"] == {"type": "QR_CODE", "alternateText": card.code,
                              "value": f"https://cafe.test/staff/card/{card.code}"}
    # Saving again finds both in place and updates them instead of failing.
    assert app.test_client().get(f"/wallet/google/{card.token}").status_code == 303


def test_every_change_patches_the_loyalty_balance(app, google_server):
    """A stamp reaches Google as a PATCH of the object's loyaltyPoints balance."""
    card = _saved_card(app, google_server)
    with app.app_context(), tenant(card.merchant_id):
        row = db.session.get(Card, card.id)
        row.stamps = 7
        db.session.commit()
        events.send(events.card_changed, merchant_id=card.merchant_id, card_id=card.id)
    run_jobs(app)
    object_id = f"{ISSUER_ID}.{card.wallet_serial}"
    patch = google_server.calls("PATCH", f"loyaltyObject/{object_id}")[-1]
    assert patch.json()["loyaltyPoints"]["balance"] == {"int": 7}
    assert google_server.state.objects[object_id]["loyaltyPoints"]["balance"] == {"int": 7}


def test_unsaved_card_is_not_pushed_to_google(app, google_server):
    """Changes to a card nobody saved to Google Wallet make no Google calls."""
    with app.app_context():
        card = card_of(gen_customer(gen_merchant()))
        events.send(events.card_changed, merchant_id=card.merchant_id, card_id=card.id)
    run_jobs(app)
    assert google_server.requests == []


def test_campaign_text_notifies_three_times_a_day_then_shows_as_text(app, google_server):
    """The first three messages in 24 h go out as TEXT_AND_NOTIFY ("notified"); the fourth
    is sent as TEXT and the result says "text_only_quota" — Google never answers 429."""
    card = _saved_card(app, google_server)
    with app.app_context():
        results = [updates.send_wallet_message(card.merchant_id, card.id, f"Offer {n}")
                   for n in range(4)]
    assert [r.google for r in results] == ["notified"] * 3 + ["text_only_quota"]
    assert all(r.status == "sent" for r in results)
    assert "3 notifications per 24 hours" in results[3].description
    object_id = f"{ISSUER_ID}.{card.wallet_serial}"
    sent = google_server.state.messages[object_id]
    assert [m["messageType"] for m in sent] == ["TEXT_AND_NOTIFY"] * 3 + ["TEXT"]
    assert [m["body"] for m in sent] == [f"Offer {n}" for n in range(4)]
    assert not [r for r in google_server.requests if r.path.endswith("addMessage")
                and r.json()["message"]["messageType"] == "TEXT_AND_NOTIFY"][3:]


def test_notifications_come_back_after_24_hours(app, google_server):
    """Notify slots used more than 24 hours ago count no longer."""
    card = _saved_card(app, google_server)
    with app.app_context():
        for _ in range(3):
            updates.send_wallet_message(card.merchant_id, card.id, "Hello")
        with unscoped():
            for row in db.session.query(WalletGoogleNotification):
                row.sent_at -= timedelta(hours=25)
            db.session.commit()
        google_server.state.messages.clear()
        result = updates.send_wallet_message(card.merchant_id, card.id, "Back again")
    assert result.google == "notified"


def test_message_also_goes_on_the_pass_back(app, google_server):
    """The text is kept as the card's latest wallet message (the Apple back field)."""
    card = _saved_card(app, google_server)
    with app.app_context():
        updates.send_wallet_message(card.merchant_id, card.id, "Pumpkin latte is back")
        with unscoped():
            row = db.session.query(WalletPass).filter_by(card_id=card.id).one()
    assert row.message == "Pumpkin latte is back"


def test_message_to_a_card_not_saved_in_google_wallet(app, google_server):
    """Configured, but the customer never saved the card: the result says so."""
    with app.app_context():
        card = card_of(gen_customer(gen_merchant()))
        result = updates.send_wallet_message(card.merchant_id, card.id, "Hi")
    assert result.google == "not_saved"
    assert result.status == "no_wallet_pass"
    assert google_server.requests == []


def test_wallet_not_configured_is_a_result_not_a_silent_success(tmp_path):
    """With no wallet credentials at all, send_wallet_message says "wallet not configured"."""
    application = wallet_app(tmp_path, None)
    with application.app_context():
        card = card_of(gen_customer(gen_merchant()))
        result = updates.send_wallet_message(card.merchant_id, card.id, "Hi")
        db.engine.dispose()
    assert result.status == "wallet_not_configured"
    assert not result.sent
    assert result.description == "Wallet not configured"
