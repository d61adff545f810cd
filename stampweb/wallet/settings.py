"""A merchant's own wallet credentials: check everything, then save all of it or nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ..extensions import db
from ..models import WalletSettings
from ..tenancy import tenant
from .credentials import (
    CredentialError,
    key_matches_certificate,
    load_certificate,
    load_pkcs12,
    load_private_key,
    parse_service_account,
    pem_of_certificate,
    pem_of_key,
)

PASS_TYPE_ID_RE = re.compile(r"^pass\.[A-Za-z0-9][A-Za-z0-9.\-]*$")
APPLE_ID_RE = re.compile(r"^[A-Z0-9]{10}$")
ISSUER_ID_RE = re.compile(r"^[0-9]{6,30}$")

# Groups of columns removed together by "use the installation's value".
CLEARABLE = {
    "apple_pass_type_id": ("apple_pass_type_id",),
    "apple_team_id": ("apple_team_id",),
    "apple_pass_cert": ("apple_pass_cert_pem", "apple_pass_key_pem"),
    "apple_wwdr_cert": ("apple_wwdr_cert_pem",),
    "apns_key": ("apns_key_id", "apns_key_pem"),
    "google_issuer_id": ("google_issuer_id",),
    "google_service_account": ("google_service_account_json",),
}


class WalletSettingsError(ValueError):
    """Input that cannot be saved; `errors` maps each form field to its message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class Upload:
    filename: str
    data: bytes


def _is_p12(upload: Upload) -> bool:
    if upload.filename.lower().endswith((".p12", ".pfx")):
        return True
    if b"-----BEGIN" in upload.data:
        return False
    try:
        x509.load_der_x509_certificate(upload.data)
    except ValueError:
        return True
    return False


def save_wallet_settings(merchant_id: int, *, values: dict[str, str | None],
                         uploads: dict[str, Upload | None]) -> WalletSettings:
    """Validate and store a merchant's overrides. Blank fields keep what is stored.

    values: apple_pass_type_id, apple_team_id, apns_key_id, google_issuer_id,
    key_password. uploads: apple_pass_cert (PEM, DER or .p12), apple_pass_key,
    apple_wwdr_cert, apns_key (.p8), google_service_account (JSON).
    Raises WalletSettingsError with a message per field; then nothing changed.
    """
    errors: dict[str, str] = {}
    changes: dict[str, str] = {}
    password = (values.get("key_password") or "").strip() or None

    def text(name: str, pattern: re.Pattern, message) -> None:
        value = (values.get(name) or "").strip()
        if not value:
            return
        if not pattern.match(value):
            errors[name] = str(message)
        else:
            changes[name] = value

    text("apple_pass_type_id", PASS_TYPE_ID_RE,
         _l("A pass type ID looks like pass.com.example.card."))
    text("apple_team_id", APPLE_ID_RE, _l("Ten capital letters or digits, e.g. A1B2C3D4E5."))
    text("apns_key_id", APPLE_ID_RE, _l("Ten capital letters or digits, e.g. A1B2C3D4E5."))
    text("google_issuer_id", ISSUER_ID_RE, _l("The issuer ID is a number from the Google Pay "
                                              "& Wallet Console."))

    cert = key = None
    cert_upload, key_upload = uploads.get("apple_pass_cert"), uploads.get("apple_pass_key")
    if cert_upload is not None:
        try:
            if _is_p12(cert_upload):
                key, cert = load_pkcs12(cert_upload.data, password)
            else:
                cert = load_certificate(cert_upload.data)
        except CredentialError as exc:
            errors["apple_pass_cert"] = str(exc)
    if key_upload is not None:
        try:
            key = load_private_key(key_upload.data, password)
        except CredentialError as exc:
            errors["apple_pass_key"] = str(exc)

    wwdr = apns_key = account_json = None
    if uploads.get("apple_wwdr_cert") is not None:
        try:
            wwdr = load_certificate(uploads["apple_wwdr_cert"].data)
        except CredentialError as exc:
            errors["apple_wwdr_cert"] = str(exc)
    if uploads.get("apns_key") is not None:
        try:
            apns_key = load_private_key(uploads["apns_key"].data)
            if not isinstance(apns_key, ec.EllipticCurvePrivateKey):
                errors["apns_key"] = str(
                    _l("An APNs auth key is an EC (P-256) key from a .p8 file."))
        except CredentialError as exc:
            errors["apns_key"] = str(exc)
    if uploads.get("google_service_account") is not None:
        raw = uploads["google_service_account"].data.decode("utf-8", "replace")
        try:
            parse_service_account(raw)
            account_json = raw
        except CredentialError as exc:
            errors["google_service_account"] = str(exc)

    with tenant(merchant_id):
        row = db.session.scalar(
            select(WalletSettings).where(WalletSettings.merchant_id == merchant_id)
        )
        # A certificate and its key are a pair: check the pair that would be stored.
        if not errors.get("apple_pass_cert") and not errors.get("apple_pass_key"):
            pair_cert = cert or (row and row.apple_pass_cert_pem and
                                 load_certificate(row.apple_pass_cert_pem.encode()))
            pair_key = key or (row and row.apple_pass_key_pem and
                               load_private_key(row.apple_pass_key_pem.encode()))
            if cert is not None and not pair_key:
                errors["apple_pass_key"] = str(_l("Upload the certificate's private key too "
                                                  "(or a .p12 file that holds both)."))
            elif key is not None and not pair_cert:
                errors["apple_pass_cert"] = str(_l("Upload the certificate that goes with "
                                                   "this key."))
            elif (cert is not None or key is not None) and not key_matches_certificate(
                    pair_key, pair_cert):
                errors["apple_pass_key"] = str(_l("This key does not belong to the pass "
                                                  "certificate."))
        if apns_key is not None and not changes.get("apns_key_id") and not (
                row and row.apns_key_id):
            errors["apns_key_id"] = str(_l("Give the key ID of this APNs key."))
        if errors:
            raise WalletSettingsError(errors)

        if row is None:
            row = WalletSettings(merchant_id=merchant_id)
            db.session.add(row)
        for name, value in changes.items():
            setattr(row, name, value)
        if cert is not None:
            row.apple_pass_cert_pem = pem_of_certificate(cert)
        if key is not None:
            row.apple_pass_key_pem = pem_of_key(key)
        if wwdr is not None:
            row.apple_wwdr_cert_pem = pem_of_certificate(wwdr)
        if apns_key is not None:
            row.apns_key_pem = pem_of_key(apns_key)
        if account_json is not None:
            row.google_service_account_json = account_json
        db.session.commit()
        return row


def clear_wallet_setting(merchant_id: int, name: str) -> bool:
    """Drop one override so the installation's value applies again."""
    columns = CLEARABLE.get(name)
    if columns is None:
        raise WalletSettingsError({"name": str(_l("Unknown setting."))})
    with tenant(merchant_id):
        row = db.session.scalar(
            select(WalletSettings).where(WalletSettings.merchant_id == merchant_id)
        )
        if row is None:
            return False
        for column in columns:
            setattr(row, column, None)
        db.session.commit()
        return True


def merchant_settings_overrides(merchant_id: int) -> set[str]:
    """Which CLEARABLE settings the merchant has set themselves."""
    with tenant(merchant_id):
        row = db.session.scalar(
            select(WalletSettings).where(WalletSettings.merchant_id == merchant_id)
        )
    if row is None:
        return set()
    return {name for name, columns in CLEARABLE.items()
            if any(getattr(row, column) for column in columns)}
