"""The Apple Wallet pass: what it shows, how it is signed, and how it is downloaded."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from stampweb.extensions import db
from stampweb.models import Location, Voucher
from stampweb.tenancy import tenant
from stampweb.wallet import passkit
from stampweb.wallet.apple_pass import PKPASS_MIMETYPE

from .factories import card_of, gen_customer, gen_merchant
from .wallet_helpers import (
    PASS_TYPE_ID,
    TEAM_ID,
    make_credentials,
    openssl_signers,
    openssl_verify,
    shared_credentials,
    wallet_app,
)


@pytest.fixture
def creds(tmp_path_factory):
    return shared_credentials(tmp_path_factory)


@pytest.fixture
def app(tmp_path, creds):
    application = wallet_app(tmp_path, creds)
    yield application
    with application.app_context():
        db.engine.dispose()


def _pkpass(app, card) -> dict[str, bytes]:
    with app.app_context():
        built = passkit.build_card_pass(card.merchant_id, card.id)
    with zipfile.ZipFile(io.BytesIO(built.data)) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def test_pass_carries_the_merchant_card_and_staff_scan_url(app):
    """pass.json names the merchant, its colours, the card's serial and token, and a QR
    code with the staff scan URL; the web service URL ends in /wallet/."""
    with app.app_context():
        merchant = gen_merchant(name="Bean There", brand_color="#123456")
        card = card_of(gen_customer(merchant, first_name="Ada"))
        files = _pkpass(app, card)
    data = json.loads(files["pass.json"])
    assert data["formatVersion"] == 1
    assert data["passTypeIdentifier"] == PASS_TYPE_ID
    assert data["teamIdentifier"] == TEAM_ID
    assert data["organizationName"] == "Bean There"
    assert data["serialNumber"] == card.wallet_serial
    assert data["authenticationToken"] == card.wallet_auth_token
    assert len(data["authenticationToken"]) >= 16
    assert data["webServiceURL"] == "https://cafe.test/wallet/"
    assert data["backgroundColor"] == "rgb(18, 52, 86)"
    assert data["foregroundColor"] == "rgb(255, 255, 255)"
    [barcode] = data["barcodes"]
    assert barcode["format"] == "PKBarcodeFormatQR"
    assert barcode["message"] == f"https://cafe.test/staff/card/{card.code}"
    assert barcode["altText"] == card.code


def test_pass_fields_show_stamps_reward_and_latest_message(app):
    """Stamps (with a changeMessage), the next reward, the reward state and the latest
    campaign message on the back (changeMessage %@)."""
    with app.app_context():
        merchant = gen_merchant()
        customer = gen_customer(merchant)
        card = card_of(customer)
        with tenant(merchant.id):
            card = db.session.merge(card)
            card.stamps = 4
            db.session.add(Voucher(merchant_id=merchant.id, customer_id=customer.id,
                                   card_id=card.id, kind="reward", title="A free coffee"))
            row = passkit.wallet_pass_for(card)
            row.message = "Double stamps on Tuesday!"
            db.session.commit()
        files = _pkpass(app, card)
    store = json.loads(files["pass.json"])["storeCard"]
    fields = {f["key"]: f for group in store.values() for f in group}
    assert fields["stamps"]["value"] == "4/10"
    assert "%@" in fields["stamps"]["changeMessage"]
    assert fields["next_reward"]["value"] == "A free coffee"
    assert fields["reward_state"]["value"] == "Reward ready: A free coffee"
    assert fields["reward_state"]["changeMessage"] == "%@"
    assert fields["vouchers"]["value"] == 1
    message = next(f for f in store["backFields"] if f["key"] == "message")
    assert message == {"key": "message", "label": "Latest news",
                       "value": "Double stamps on Tuesday!", "changeMessage": "%@"}


def test_birthday_gift_shows_as_reward_state(app):
    """A card in the birthday-gift state says so on the pass."""
    with app.app_context():
        merchant = gen_merchant()
        card = card_of(gen_customer(merchant))
        with tenant(merchant.id):
            card = db.session.merge(card)
            card.reward_state = "birthday_gift"
            db.session.commit()
        files = _pkpass(app, card)
    store = json.loads(files["pass.json"])["storeCard"]
    assert store["primaryFields"][0]["value"] == "Birthday gift: A birthday treat"


def test_up_to_ten_locations_with_relevant_text(app):
    """Shops with coordinates become pass locations (at most ten) for lock-screen nudges."""
    with app.app_context():
        merchant = gen_merchant()
        with tenant(merchant.id):
            for n in range(12):
                db.session.add(Location(merchant_id=merchant.id, name=f"Shop {n}",
                                        latitude=52.0 + n / 100, longitude=13.4))
            db.session.commit()
        files = _pkpass(app, card_of(gen_customer(merchant)))
    locations = json.loads(files["pass.json"])["locations"]
    assert len(locations) == 10
    assert locations[0]["latitude"] == 52.0
    assert "Shop 0" in locations[0]["relevantText"]


def test_manifest_lists_every_file_with_its_sha1(app):
    """manifest.json holds the SHA-1 of every other file, and nothing stray is zipped."""
    import hashlib

    with app.app_context():
        files = _pkpass(app, card_of(gen_customer(gen_merchant())))
    manifest = json.loads(files["manifest.json"])
    assert set(files) == set(manifest) | {"manifest.json", "signature"}
    assert {"pass.json", "icon.png", "icon@2x.png", "logo.png", "logo@2x.png"} <= set(manifest)
    for name, digest in manifest.items():
        assert hashlib.sha1(files[name]).hexdigest() == digest


def test_signature_verifies_with_openssl_and_embeds_the_wwdr_certificate(app, creds, tmp_path):
    """The detached CMS signature over manifest.json verifies with `openssl smime -verify
    -binary` against the CA, and carries the WWDR intermediate with the signer."""
    with app.app_context():
        files = _pkpass(app, card_of(gen_customer(gen_merchant())))
    result = openssl_verify(tmp_path, files["signature"], files["manifest.json"], creds.ca_pem)
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr
    certificates = openssl_signers(tmp_path, files["signature"])
    assert "Worldwide Developer Relations" in certificates
    assert f"Pass Type ID: {PASS_TYPE_ID}" in certificates


def test_tampered_manifest_fails_openssl_verification(app, creds, tmp_path):
    """A changed manifest no longer matches the signature (the check above is real)."""
    with app.app_context():
        files = _pkpass(app, card_of(gen_customer(gen_merchant())))
    tampered = files["manifest.json"].replace(b"{", b"{ ", 1)
    assert openssl_verify(tmp_path, files["signature"], tampered, creds.ca_pem).returncode != 0


def test_p12_certificate_signs_the_same_way(tmp_path, creds):
    """APPLE_PASS_CERT may be a .p12 bundle (key inside, password APPLE_PASS_KEY_PASSWORD)."""
    application = wallet_app(tmp_path, creds, APPLE_PASS_CERT=str(creds.pass_p12),
                             APPLE_PASS_KEY=None, APPLE_PASS_KEY_PASSWORD="p12-secret")
    with application.app_context():
        files = _pkpass(application, card_of(gen_customer(gen_merchant())))
        db.engine.dispose()
    check = openssl_verify(tmp_path, files["signature"], files["manifest.json"], creds.ca_pem)
    assert check.returncode == 0, check.stderr


def test_default_images_are_made_in_the_brand_colour(app):
    """Without an uploaded logo, icon and logo (with @2x) are drawn in the brand colour."""
    with app.app_context():
        files = _pkpass(app, card_of(gen_customer(gen_merchant(brand_color="#ff0000"))))
    icon = Image.open(io.BytesIO(files["icon.png"]))
    assert icon.size == (29, 29)
    assert Image.open(io.BytesIO(files["icon@2x.png"])).size == (58, 58)
    assert Image.open(io.BytesIO(files["logo@2x.png"])).size == (320, 100)
    assert icon.convert("RGB").getpixel((3, 14)) == (255, 0, 0)


def test_uploaded_logo_is_resized_into_icon_and_logo(app):
    """The merchant's logo becomes icon.png and logo.png, scaled to Apple's sizes."""
    buffer = io.BytesIO()
    Image.new("RGB", (400, 400), (0, 128, 0)).save(buffer, format="PNG")
    with app.app_context():
        merchant = gen_merchant(logo=buffer.getvalue(), logo_mimetype="image/png")
        files = _pkpass(app, card_of(gen_customer(merchant)))
    icon = Image.open(io.BytesIO(files["icon@2x.png"])).convert("RGB")
    assert icon.size == (58, 58) and icon.getpixel((29, 29)) == (0, 128, 0)
    logo = Image.open(io.BytesIO(files["logo.png"]))
    assert logo.size == (160, 50)


def test_customer_downloads_the_pass_by_card_token(app):
    """/wallet/pass/<token>.pkpass answers the signed pass as application/vnd.apple.pkpass."""
    client = app.test_client()
    with app.app_context():
        card = card_of(gen_customer(gen_merchant()))
    response = client.get(f"/wallet/pass/{card.token}.pkpass")
    assert response.status_code == 200
    assert response.mimetype == PKPASS_MIMETYPE
    assert response.headers["Last-Modified"]
    assert zipfile.ZipFile(io.BytesIO(response.data)).read("pass.json")
    assert client.get("/wallet/pass/not-a-token.pkpass").status_code == 404


def test_no_download_when_apple_wallet_is_not_configured(tmp_path):
    """Without credentials the download answers 404 and the card page shows no button."""
    application = wallet_app(tmp_path, None)
    with application.app_context():
        card = card_of(gen_customer(gen_merchant()))
        with pytest.raises(passkit.WalletNotConfigured):
            passkit.build_card_pass(card.merchant_id, card.id)
        db.engine.dispose()
    assert application.test_client().get(f"/wallet/pass/{card.token}.pkpass").status_code == 404


def test_export_pass_command_finds_the_card_across_merchants(app, creds, tmp_path):
    """`flask wallet export-pass --card CODE -o FILE` writes that card's signed pass."""
    with app.app_context():
        gen_merchant()
        merchant = gen_merchant()
        card = card_of(gen_customer(merchant))
    output = tmp_path / "card.pkpass"
    result = app.test_cli_runner().invoke(
        args=["wallet", "export-pass", "--card", card.code, "-o", str(output)])
    assert result.exit_code == 0, result.output
    bundle = zipfile.ZipFile(output)
    assert json.loads(bundle.read("pass.json"))["serialNumber"] == card.wallet_serial
    check = openssl_verify(tmp_path, bundle.read("signature"), bundle.read("manifest.json"),
                           creds.ca_pem)
    assert check.returncode == 0, check.stderr
    missing = app.test_cli_runner().invoke(
        args=["wallet", "export-pass", "--card", "NOPE", "-o", str(output)])
    assert missing.exit_code != 0 and "No card" in missing.output


def test_expired_or_mismatched_certificate_disables_apple_wallet(tmp_path):
    """A pass certificate for another pass type id is reported, and no pass is built."""
    other = make_credentials(tmp_path / "other", pass_type_id="pass.other.id")
    application = wallet_app(tmp_path, other)
    with application.app_context():
        from stampweb.wallet.credentials import wallet_status

        merchant = gen_merchant()
        status = wallet_status(merchant.id)
        assert not status.apple_ready
        assert any("pass.other.id" in p for p in status.problems)
        db.engine.dispose()


def _strings(data: bytes) -> dict[str, str]:
    """Parse a pass.strings file (UTF-16 with BOM, `"key" = "text";` lines)."""
    import re

    assert data[:2] in (b"\xff\xfe", b"\xfe\xff"), "pass.strings must be UTF-16 with a BOM"
    pattern = re.compile(r'^"((?:[^"\\]|\\.)*)" = "((?:[^"\\]|\\.)*)";$')
    pairs = [pattern.match(line).groups() for line in data.decode("utf-16").splitlines()]
    return {key.replace('\\"', '"'): text.replace('\\"', '"') for key, text in pairs}


def test_every_shipped_language_has_pass_strings_for_the_labels(app, monkeypatch):
    """pass.json is in the customer's language; <xx>.lproj/pass.strings turns each of
    its labels into the phone's language, for en, ru, kk, he and fa."""
    from flask_babel import get_locale

    def tagged(text, **values):  # a stand-in catalogue: "[he] Stamps"
        return f"[{get_locale()}] " + (text % values if values else text)

    monkeypatch.setattr(passkit, "_", tagged)
    with app.app_context():
        merchant = gen_merchant(name="Bean There")
        card = card_of(gen_customer(merchant, first_name="Ada", locale="ru"))
        files = _pkpass(app, card)
    data = json.loads(files["pass.json"])
    labels = {f["label"] for group in data["storeCard"].values() for f in group}
    assert "[ru] Stamps" in labels and data["description"] == "[ru] Bean There stamp card"
    manifest = json.loads(files["manifest.json"])
    for locale in ("en", "ru", "kk", "he", "fa"):
        name = f"{locale}.lproj/pass.strings"
        assert name in manifest
        strings = _strings(files[name])
        assert labels <= set(strings), f"{locale}: labels without a translation"
        assert strings["[ru] Stamps"] == f"[{locale}] Stamps"
        assert strings["[ru] Stamps: %@"] == f"[{locale}] Stamps: %@"
        assert strings["[ru] Bean There stamp card"] == f"[{locale}] Bean There stamp card"
