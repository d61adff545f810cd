"""The wallet settings page, a merchant's own credentials, and the card page's buttons."""

from __future__ import annotations

import io

import pytest
from flask import render_template_string

from stampweb.extensions import db
from stampweb.models import WalletSettings
from stampweb.tenancy import unscoped
from stampweb.wallet.credentials import wallet_status
from stampweb.wallet.settings import Upload, WalletSettingsError, save_wallet_settings

from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, gen_user, login
from .wallet_helpers import (
    PASS_TYPE_ID,
    TEAM_ID,
    key_pem,
    make_credentials,
    shared_credentials,
    wallet_app,
)


@pytest.fixture
def creds(tmp_path_factory):
    return shared_credentials(tmp_path_factory)


@pytest.fixture
def app(tmp_path):
    application = wallet_app(tmp_path, None)
    yield application
    with application.app_context():
        db.engine.dispose()


def _merchant(app):
    with app.app_context():
        merchant = gen_merchant()
        return merchant.id, merchant.slug


def test_page_lists_what_is_missing_when_nothing_is_configured(app):
    """With no credentials anywhere, the page says both wallets are off and what's missing."""
    _id, slug = _merchant(app)
    client = app.test_client()
    login(client, f"owner@{slug}.test")
    page = client.get("/admin/wallet")
    assert page.status_code == 200
    assert "Missing:" in page.text
    assert "Pass certificate" in page.text and "Google Wallet issuer ID" in page.text


def test_page_shows_each_certificate_subject_and_expiry(tmp_path, creds):
    """Configured globally: the pass and WWDR certificates are listed with subject and
    expiry, marked as the installation's."""
    application = wallet_app(tmp_path, creds)
    with application.app_context():
        merchant = gen_merchant()
        slug = merchant.slug
    client = application.test_client()
    login(client, f"owner@{slug}.test")
    page = client.get("/admin/wallet").text
    assert f"Pass Type ID: {PASS_TYPE_ID}" in page
    assert "Test Worldwide Developer Relations" in page
    assert "Expires:" in page and "installation" in page
    assert "Apple Wallet: <strong>ready</strong>" in page
    with application.app_context():
        db.engine.dispose()


def test_owner_uploads_own_apple_credentials_as_p12(app, creds):
    """An owner's .p12 (with its password) becomes the merchant's pass certificate and key;
    the effective config then uses the merchant's values."""
    merchant_id, slug = _merchant(app)
    client = app.test_client()
    login(client, f"owner@{slug}.test")
    token = csrf_token_from(client.get("/admin/wallet").text)
    response = client.post("/admin/wallet", data={
        "csrf_token": token,
        "apple_pass_type_id": PASS_TYPE_ID,
        "apple_team_id": TEAM_ID,
        "key_password": "p12-secret",
        "apple_pass_cert": (io.BytesIO(creds.pass_p12.read_bytes()), "pass.p12"),
        "apple_wwdr_cert": (io.BytesIO(creds.wwdr_pem.read_bytes()), "wwdr.pem"),
    }, content_type="multipart/form-data")
    assert response.status_code == 303, response.text
    with app.app_context():
        status = wallet_status(merchant_id)
        assert status.apple_ready
        assert status.apple_config.source == "merchant"
        with unscoped():
            row = db.session.query(WalletSettings).one()
        assert "ENCRYPTED" not in row.apple_pass_key_pem  # stored decrypted: no password kept


def test_bad_upload_is_reported_next_to_its_field_and_nothing_is_saved(app, creds, tmp_path):
    """A key that doesn't belong to the certificate is refused beside the key field, the
    typed pass type id is kept, and no settings row is written."""
    _merchant_id, slug = _merchant(app)
    other = make_credentials(tmp_path / "other")
    client = app.test_client()
    login(client, f"owner@{slug}.test")
    token = csrf_token_from(client.get("/admin/wallet").text)
    response = client.post("/admin/wallet", data={
        "csrf_token": token,
        "apple_pass_type_id": "pass.typed.value",
        "apple_pass_cert": (io.BytesIO(creds.pass_cert_pem.read_bytes()), "cert.pem"),
        "apple_pass_key": (io.BytesIO(key_pem(other.pass_key)), "key.pem"),
    }, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "This key does not belong to the pass certificate." in response.text
    assert 'value="pass.typed.value"' in response.text
    with app.app_context(), unscoped():
        assert db.session.query(WalletSettings).count() == 0


def test_service_rejects_garbage_per_field(app):
    """The settings service names every bad field at once."""
    merchant_id, _slug = _merchant(app)
    with app.app_context(), pytest.raises(WalletSettingsError) as caught:
        save_wallet_settings(merchant_id, values={"apple_team_id": "lowercase",
                                                  "google_issuer_id": "abc"},
                             uploads={"apple_wwdr_cert": Upload("x.pem", b"not a cert"),
                                      "google_service_account": Upload("a.json", b"{}")})
    assert set(caught.value.errors) == {"apple_team_id", "google_issuer_id", "apple_wwdr_cert",
                                        "google_service_account"}


def test_merchant_override_beats_global_and_clearing_restores_it(tmp_path, creds):
    """A merchant's own pass type id wins over the installation's; clearing it brings the
    global one back. Other merchants keep the global value throughout."""
    application = wallet_app(tmp_path, creds)
    with application.app_context():
        mine, other = gen_merchant(), gen_merchant()
        mine_id, other_id, slug = mine.id, other.id, mine.slug
        save_wallet_settings(mine_id, values={"apple_pass_type_id": "pass.mine.card"},
                             uploads={})
        assert wallet_status(mine_id).apple[0].value == "pass.mine.card"
        assert wallet_status(other_id).apple[0].value == PASS_TYPE_ID
        # The global certificate is for another pass type id: Apple is off for `mine`.
        assert not wallet_status(mine_id).apple_ready
    client = application.test_client()
    login(client, f"owner@{slug}.test")
    page = client.get("/admin/wallet").text
    response = client.post("/admin/wallet/clear", data={
        "csrf_token": csrf_token_from(page), "name": "apple_pass_type_id"})
    assert response.status_code == 303
    with application.app_context():
        assert wallet_status(mine_id).apple_ready
        db.engine.dispose()


def test_staff_cannot_see_and_managers_cannot_change_wallet_settings(app):
    """Staff get 403; a manager sees the page but may not post to it."""
    with app.app_context():
        merchant = gen_merchant()
        staff = gen_user(merchant, "staff")
        manager = gen_user(merchant, "manager")
        staff_email, manager_email = staff.email, manager.email
    client = app.test_client()
    login(client, staff_email)
    assert client.get("/admin/wallet").status_code == 403
    client = app.test_client()
    login(client, manager_email)
    page = client.get("/admin/wallet")
    assert page.status_code == 200 and "Use your own credentials" not in page.text
    token = csrf_token_from(page.text)
    assert client.post("/admin/wallet", data={"csrf_token": token}).status_code == 403


def test_one_merchants_settings_never_show_for_another(app):
    """Merchant B's page shows none of merchant A's uploaded values."""
    with app.app_context():
        a, b = gen_merchant(), gen_merchant()
        save_wallet_settings(a.id, values={"apple_pass_type_id": "pass.secret.a"}, uploads={})
        b_slug = b.slug
    client = app.test_client()
    login(client, f"owner@{b_slug}.test")
    assert "pass.secret.a" not in client.get("/admin/wallet").text


def _buttons(app, card, merchant) -> str:
    with app.test_request_context("/card/x"):
        return render_template_string('{% include "customer/_wallet_buttons.html" %}',
                                      card=card, merchant=merchant)


def test_card_page_buttons_appear_only_when_configured(tmp_path, creds, app):
    """No wallet, no buttons; Apple configured: "Add to Apple Wallet" linking to the
    card's .pkpass download."""
    with app.app_context():
        merchant = gen_merchant()
        card = card_of(gen_customer(merchant))
        assert "Wallet" not in _buttons(app, card, merchant)
    configured = wallet_app(tmp_path / "configured", creds)
    with configured.app_context():
        merchant = gen_merchant()
        card = card_of(gen_customer(merchant))
        html = _buttons(configured, card, merchant)
        db.engine.dispose()
    assert "Add to Apple Wallet" in html
    assert f'href="/wallet/pass/{card.token}.pkpass"' in html
    assert "Save to Google Wallet" not in html


def test_wallet_status_command_reports_ready_and_missing(tmp_path, creds):
    """`flask wallet status` shows each merchant's wallets, certificate expiry and gaps."""
    application = wallet_app(tmp_path, creds)
    with application.app_context():
        slug = gen_merchant().slug
    result = application.test_cli_runner().invoke(args=["wallet", "status", "--merchant", slug])
    assert result.exit_code == 0, result.output
    assert f"{slug}: Apple Wallet ready, Google Wallet off" in result.output
    assert "expires" in result.output and "Google Wallet issuer ID: missing" in result.output
    with application.app_context():
        db.engine.dispose()


def test_private_keys_are_sealed_at_rest_and_survive_a_secret_key_rotation(app, creds):
    """The database holds Fernet tokens, not PEM; after SECRET_KEY is rotated (old key in
    SECRET_KEY_FALLBACKS) they still open; with the old key gone they read as missing."""
    from sqlalchemy import text

    merchant_id, _slug = _merchant(app)
    with app.app_context():
        save_wallet_settings(merchant_id, values={"apns_key_id": "KEY1234567"},
                             uploads={"apns_key": Upload("AuthKey.p8", key_pem(creds.apns_key))})
        db.session.commit()
        stored = db.session.execute(text("SELECT apns_key_pem FROM wallet_settings")).scalar()
        assert stored.startswith("gAAAAA") and "PRIVATE KEY" not in stored
        with unscoped():
            assert "PRIVATE KEY" in db.session.query(WalletSettings).one().apns_key_pem

    old_key = app.config["SECRET_KEY"]
    app.config.update(SECRET_KEY="a brand new secret key", SECRET_KEY_FALLBACKS=[old_key])
    with app.app_context(), unscoped():
        assert "PRIVATE KEY" in db.session.query(WalletSettings).one().apns_key_pem

    app.config.update(SECRET_KEY_FALLBACKS=[])
    with app.app_context():
        with unscoped():
            assert db.session.query(WalletSettings).one().apns_key_pem is None
        assert app.test_client().get("/healthz").status_code in (200, 503)
