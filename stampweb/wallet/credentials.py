"""Wallet credentials: what is configured for a merchant, and whether it can work.

The installation's credentials come from the environment (file paths, see
config.py). A merchant may override any of them on the wallet settings page;
the effective value is the merchant's where it set one, else the global one.
A certificate and its private key always come from the same place, so a
merchant's own certificate is never paired with the installation's key.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import bindparam, select

from .. import merchant_facts
from ..extensions import db
from ..models import WalletSettings, utcnow
from ..tenancy import tenant

MERCHANT = "merchant"
GLOBAL = "global"


class CredentialError(ValueError):
    """A certificate, key or account file that cannot be used, and why."""


# --- parsing -------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CredentialError(str(_l("This is not a certificate (PEM or DER)."))) from exc


@functools.lru_cache(maxsize=64)
def load_private_key(data: bytes, password: str | None = None):
    """A private key from PEM (optionally encrypted) or DER bytes (cached: RSA keys are
    slow to check, and every pass download needs the key)."""
    secret = password.encode() if password else None
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=secret)
        return serialization.load_der_private_key(data, password=secret)
    except TypeError as exc:
        # A password given for an unencrypted key, or none for an encrypted one.
        raise CredentialError(str(_l("The key's password is missing or not needed."))) from exc
    except ValueError as exc:
        raise CredentialError(
            str(_l("This is not a private key, or the password is wrong."))
        ) from exc


@functools.lru_cache(maxsize=16)
def load_pkcs12(data: bytes, password: str | None):
    """(key, certificate) from a .p12 bundle as exported from Keychain Access."""
    try:
        key, cert, _extra = pkcs12.load_key_and_certificates(
            data, password.encode() if password else None
        )
    except ValueError as exc:
        raise CredentialError(str(_l("The .p12 file cannot be read with this password."))) from exc
    if key is None or cert is None:
        raise CredentialError(str(_l("The .p12 file holds no certificate with its key.")))
    return key, cert


def pem_of_certificate(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pem_of_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_matches_certificate(key, cert: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return key.public_key().public_bytes(enc, fmt) == cert.public_key().public_bytes(enc, fmt)


def certificate_subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else cert.subject.rfc4514_string()


def certificate_uid(cert: x509.Certificate) -> str | None:
    """The pass type id Apple writes into a Pass Type ID certificate's subject UID."""
    names = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return names[0].value if names else None


def parse_service_account(text: str) -> dict:
    """The fields we use from a Google service account JSON key file."""
    return dict(_parse_service_account(text))


@functools.lru_cache(maxsize=64)
def _parse_service_account(text: str) -> dict:
    # Cached: checking an RSA key costs tens of milliseconds of CPU, and
    # wallet_status() reads the account for every stamp of a merchant with
    # Google Wallet set up. A file that fails is not cached (nor kept).
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise CredentialError(str(_l("This is not a JSON file."))) from exc
    if not isinstance(info, dict) or not info.get("client_email") or not info.get("private_key"):
        raise CredentialError(
            str(_l("This is not a service account key (client_email and private_key missing)."))
        )
    try:
        serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialError(str(_l("The service account's private key cannot be read."))) from exc
    return {
        "client_email": info["client_email"],
        "private_key": info["private_key"],
        "token_uri": info.get("token_uri") or "https://oauth2.googleapis.com/token",
    }


@functools.lru_cache(maxsize=64)
def _read_file(path: str, mtime: float) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def read_file(path: str) -> bytes:
    """A credential file's bytes, cached until the file changes."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise CredentialError(str(_l("File not found: %(path)s", path=path))) from exc
    return _read_file(path, mtime)


# --- effective configuration ---------------------------------------------------


@dataclass
class AppleConfig:
    """Everything needed to sign a pass and push its updates."""

    pass_type_id: str
    team_id: str
    cert: x509.Certificate
    key: object
    wwdr: x509.Certificate
    apns_key_id: str | None = None
    apns_key: ec.EllipticCurvePrivateKey | None = None
    source: str = GLOBAL

    @property
    def apns_auth(self) -> str:
        """'token' with a .p8 key (preferred by Apple), else the pass certificate."""
        return "token" if self.apns_key is not None and self.apns_key_id else "certificate"


@dataclass
class GoogleConfig:
    issuer_id: str
    client_email: str
    private_key_pem: str
    token_uri: str
    api_url: str
    source: str = GLOBAL


@dataclass
class StatusItem:
    """One line of the settings page: a setting, where it comes from, and its health."""

    key: str
    label: str
    value: str | None = None
    source: str | None = None
    subject: str | None = None
    expires_at: datetime | None = None
    problem: str | None = None

    @property
    def configured(self) -> bool:
        return self.value is not None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= utcnow()


@dataclass
class WalletStatus:
    apple: list[StatusItem] = field(default_factory=list)
    google: list[StatusItem] = field(default_factory=list)
    apple_config: AppleConfig | None = None
    google_config: GoogleConfig | None = None

    @property
    def apple_ready(self) -> bool:
        return self.apple_config is not None

    @property
    def google_ready(self) -> bool:
        return self.google_config is not None

    @property
    def missing(self) -> list[str]:
        return [str(i.label) for i in self.apple + self.google if not i.configured]

    @property
    def problems(self) -> list[str]:
        return [f"{i.label}: {i.problem}" for i in self.apple + self.google if i.problem]


def merchant_settings(merchant_id: int) -> WalletSettings | None:
    with tenant(merchant_id):
        return db.session.scalar(
            select(WalletSettings).where(WalletSettings.merchant_id == merchant_id)
        )


_settings_table = WalletSettings.__table__
_HAS_OWN_SETTINGS = (
    select(_settings_table.c.id)
    .where(_settings_table.c.merchant_id == bindparam("merchant_id"))
    .limit(1)
)


def could_be_ready(merchant_id: int) -> bool:
    """False when wallet_status() cannot find a working wallet, known cheaply.

    Asked for every stamp before the full check. Each wallet needs an id
    (Apple's pass type ID, Google's issuer ID) from the installation or from
    the merchant's own settings; with neither set installation-wide, a
    merchant without a settings row has no wallet, and one indexed look-up
    without the ORM says so (or, in a logged-in request, the answer read with
    the merchant: stampweb/merchant_facts.py). It is asked afresh each
    request, so a merchant who sets the wallet up in another process is seen
    by the next stamp.
    """
    config = current_app.config
    if config.get("APPLE_PASS_TYPE_ID") or config.get("GOOGLE_WALLET_ISSUER_ID"):
        return True
    facts = merchant_facts.known(merchant_id)
    if facts is not None:  # read with the logged-in user's merchant this request
        return facts.has_wallet_settings
    found = db.session.connection().execute(_HAS_OWN_SETTINGS, {"merchant_id": merchant_id})
    return found.first() is not None


def _pick(own, global_value):
    if own:
        return own, MERCHANT
    if global_value:
        return global_value, GLOBAL
    return None, None


def _cert_item(item: StatusItem, loader) -> x509.Certificate | None:
    try:
        cert = loader()
    except CredentialError as exc:
        item.problem = str(exc)
        return None
    item.subject = certificate_subject(cert)
    item.expires_at = cert.not_valid_after_utc.replace(tzinfo=None)
    if item.expired:
        item.problem = str(_l("This certificate has expired."))
    return cert


def wallet_status(merchant_id: int) -> WalletStatus:
    """What is configured for this merchant, from where, and whether it works."""
    config = current_app.config
    own = merchant_settings(merchant_id)
    status = WalletStatus()
    status.apple_config = _apple(own, config, status.apple)
    status.google_config = _google(own, config, status.google)
    return status


def _apple(own: WalletSettings | None, config, items: list[StatusItem]) -> AppleConfig | None:
    pass_type_id, ptid_source = _pick(
        own and own.apple_pass_type_id, config.get("APPLE_PASS_TYPE_ID")
    )
    team_id, team_source = _pick(own and own.apple_team_id, config.get("APPLE_TEAM_ID"))
    items.append(StatusItem("apple_pass_type_id", _l("Pass type ID"), pass_type_id, ptid_source))
    items.append(StatusItem("apple_team_id", _l("Team ID"), team_id, team_source))

    cert_item = StatusItem("apple_pass_cert", _l("Pass certificate"))
    key_item = StatusItem("apple_pass_key", _l("Pass certificate's private key"))
    items += [cert_item, key_item]
    cert = key = None
    if own and own.apple_pass_cert_pem:
        cert_item.value, cert_item.source = _l("uploaded"), MERCHANT
        cert = _cert_item(cert_item, lambda: load_certificate(own.apple_pass_cert_pem.encode()))
        if own.apple_pass_key_pem:
            key_item.value, key_item.source = _l("uploaded"), MERCHANT
            try:
                key = load_private_key(own.apple_pass_key_pem.encode())
            except CredentialError as exc:
                key_item.problem = str(exc)
    elif config.get("APPLE_PASS_CERT"):
        cert, key = _global_pass_cert(config, cert_item, key_item)
    if cert is not None and key is not None and not key_matches_certificate(key, cert):
        key_item.problem = str(_l("This key does not belong to the pass certificate."))
        key = None
    if cert is not None and pass_type_id and certificate_uid(cert) not in (None, pass_type_id):
        cert_item.problem = str(
            _l("The certificate is for %(uid)s, not %(ptid)s.", uid=certificate_uid(cert),
               ptid=pass_type_id)
        )

    wwdr_item = StatusItem("apple_wwdr_cert", _l("Apple WWDR intermediate certificate"))
    items.append(wwdr_item)
    wwdr = None
    if own and own.apple_wwdr_cert_pem:
        wwdr_item.value, wwdr_item.source = _l("uploaded"), MERCHANT
        wwdr = _cert_item(wwdr_item, lambda: load_certificate(own.apple_wwdr_cert_pem.encode()))
    elif config.get("APPLE_WWDR_CERT"):
        path = config["APPLE_WWDR_CERT"]
        wwdr_item.value, wwdr_item.source = path, GLOBAL
        wwdr = _cert_item(wwdr_item, lambda: load_certificate(read_file(path)))

    apns_item = StatusItem("apns_key", _l("APNs auth key (.p8), optional"))
    items.append(apns_item)
    apns_key_id, _src = _pick(own and own.apns_key_id, config.get("APNS_KEY_ID"))
    apns_key = None
    if own and own.apns_key_pem:
        apns_item.value, apns_item.source = _l("uploaded"), MERCHANT
        apns_key = _apns_key(apns_item, lambda: own.apns_key_pem.encode())
    elif config.get("APNS_KEY"):
        path = config["APNS_KEY"]
        apns_item.value, apns_item.source = path, GLOBAL
        apns_key = _apns_key(apns_item, lambda: read_file(path))
    if apns_key is not None and not apns_key_id:
        apns_item.problem = str(_l("The key ID (APNS_KEY_ID) is missing."))
        apns_key = None
    if apns_item.value is None:
        # Optional: without it pushes use the pass certificate instead.
        apns_item.value = str(_l("not set: pushes use the pass certificate"))

    if not (pass_type_id and team_id and cert is not None and key is not None
            and wwdr is not None) or cert_item.problem:
        return None
    sources = {i.source for i in items if i.source}
    return AppleConfig(
        pass_type_id=pass_type_id,
        team_id=team_id,
        cert=cert,
        key=key,
        wwdr=wwdr,
        apns_key_id=apns_key_id if apns_key is not None else None,
        apns_key=apns_key,
        source=MERCHANT if sources == {MERCHANT} else (GLOBAL if sources == {GLOBAL} else "mixed"),
    )


def _global_pass_cert(config, cert_item: StatusItem, key_item: StatusItem):
    path = config["APPLE_PASS_CERT"]
    password = config.get("APPLE_PASS_KEY_PASSWORD")
    cert_item.value, cert_item.source = path, GLOBAL
    try:
        data = read_file(path)
    except CredentialError as exc:
        cert_item.problem = str(exc)
        return None, None
    if path.lower().endswith((".p12", ".pfx")):
        try:
            key, cert = load_pkcs12(data, password)
        except CredentialError as exc:
            cert_item.problem = str(exc)
            return None, None
        key_item.value, key_item.source = _l("inside the .p12 file"), GLOBAL
        _cert_item(cert_item, lambda: cert)
        return cert, key
    cert = _cert_item(cert_item, lambda: load_certificate(data))
    key = None
    if config.get("APPLE_PASS_KEY"):
        key_path = config["APPLE_PASS_KEY"]
        key_item.value, key_item.source = key_path, GLOBAL
        try:
            key = load_private_key(read_file(key_path), password)
        except CredentialError as exc:
            key_item.problem = str(exc)
    return cert, key


def _apns_key(item: StatusItem, reader) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = load_private_key(reader())
    except CredentialError as exc:
        item.problem = str(exc)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        item.problem = str(_l("An APNs auth key is an EC (P-256) key from a .p8 file."))
        return None
    return key


def _google(own: WalletSettings | None, config, items: list[StatusItem]) -> GoogleConfig | None:
    issuer_id, issuer_source = _pick(own and own.google_issuer_id,
                                     config.get("GOOGLE_WALLET_ISSUER_ID"))
    items.append(StatusItem("google_issuer_id", _l("Google Wallet issuer ID"), issuer_id,
                            issuer_source))
    account_item = StatusItem("google_service_account", _l("Google service account key"))
    items.append(account_item)
    account = None
    try:
        if own and own.google_service_account_json:
            account_item.source = MERCHANT
            account = parse_service_account(own.google_service_account_json)
        elif config.get("GOOGLE_WALLET_SERVICE_ACCOUNT_FILE"):
            account_item.source = GLOBAL
            account = parse_service_account(
                read_file(config["GOOGLE_WALLET_SERVICE_ACCOUNT_FILE"]).decode("utf-8", "replace")
            )
    except CredentialError as exc:
        account_item.value = str(_l("unreadable"))
        account_item.problem = str(exc)
    if account is not None:
        account_item.value = account_item.subject = account["client_email"]
    if not issuer_id or account is None:
        return None
    return GoogleConfig(
        issuer_id=issuer_id,
        client_email=account["client_email"],
        private_key_pem=account["private_key"],
        token_uri=account["token_uri"],
        api_url=config["GOOGLE_WALLET_API_URL"].rstrip("/"),
        source=MERCHANT if {issuer_source, account_item.source} == {MERCHANT} else GLOBAL,
    )


def apple_config(merchant_id: int) -> AppleConfig | None:
    """The merchant's effective Apple Wallet configuration, or None when incomplete."""
    return wallet_status(merchant_id).apple_config


def google_config(merchant_id: int) -> GoogleConfig | None:
    """The merchant's effective Google Wallet configuration, or None when incomplete."""
    return wallet_status(merchant_id).google_config
