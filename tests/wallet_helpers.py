"""Throwaway wallet credentials made during the test run.

A root CA, a WWDR-like intermediate and a Pass Type ID certificate under it
(as Apple issues them), an APNs .p8 key, a Google service account key, and a
TLS certificate for 127.0.0.1 so httpx can trust the local stand-ins.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASS_TYPE_ID = "pass.test.stampweb.card"
TEAM_ID = "TEAMID1234"
APNS_KEY_ID = "KEYID12345"
ISSUER_ID = "3388000000012345678"


def _name(**parts) -> x509.Name:
    oids = {"cn": NameOID.COMMON_NAME, "o": NameOID.ORGANIZATION_NAME,
            "ou": NameOID.ORGANIZATIONAL_UNIT_NAME, "uid": NameOID.USER_ID,
            "c": NameOID.COUNTRY_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts.items()])


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject, issuer, public_key, signing_key, *, ca: bool, days: int = 365,
          extensions=()) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


@dataclass
class Credentials:
    folder: Path
    ca_cert: x509.Certificate
    wwdr_cert: x509.Certificate
    pass_cert: x509.Certificate
    pass_key: object
    apns_key: ec.EllipticCurvePrivateKey
    google_key: rsa.RSAPrivateKey
    client_email: str

    @property
    def ca_pem(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def wwdr_pem(self) -> Path:
        return self.folder / "wwdr.pem"

    @property
    def pass_cert_pem(self) -> Path:
        return self.folder / "pass_cert.pem"

    @property
    def pass_key_pem(self) -> Path:
        return self.folder / "pass_key.pem"

    @property
    def pass_p12(self) -> Path:
        return self.folder / "pass.p12"

    @property
    def apns_p8(self) -> Path:
        return self.folder / "AuthKey.p8"

    @property
    def service_account(self) -> Path:
        return self.folder / "service_account.json"

    @property
    def tls_cert(self) -> Path:
        return self.folder / "tls_cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.folder / "tls_key.pem"

    def write_service_account(self, token_uri: str) -> Path:
        self.service_account.write_text(json.dumps({
            "type": "service_account",
            "project_id": "stampweb-test",
            "private_key_id": "abc123",
            "private_key": key_pem(self.google_key).decode(),
            "client_email": self.client_email,
            "client_id": "1234567890",
            "token_uri": token_uri,
        }))
        return self.service_account


def make_credentials(folder: Path, *, pass_type_id: str = PASS_TYPE_ID,
                     team_id: str = TEAM_ID, pass_days: int = 365,
                     p12_password: str = "p12-secret") -> Credentials:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _rsa()
    ca_cert = _cert(_name(cn="Test Root CA", o="stampweb tests"),
                    _name(cn="Test Root CA", o="stampweb tests"),
                    ca_key.public_key(), ca_key, ca=True, days=3650)
    wwdr_key = _rsa()
    wwdr_name = _name(cn="Test Worldwide Developer Relations Certification Authority",
                      ou="G4", o="stampweb tests", c="US")
    wwdr_cert = _cert(wwdr_name, ca_cert.subject, wwdr_key.public_key(), ca_key, ca=True,
                      days=1825)
    pass_key = _rsa()
    pass_cert = _cert(
        _name(uid=pass_type_id, cn=f"Pass Type ID: {pass_type_id}", ou=team_id,
              o="Test Cafe", c="US"),
        wwdr_cert.subject, pass_key.public_key(), wwdr_key, ca=False, days=pass_days,
        extensions=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = _cert(
        _name(cn="127.0.0.1"), ca_cert.subject, tls_key.public_key(), ca_key, ca=False,
        extensions=[(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1")),
                                                  x509.DNSName("localhost")]), False)],
    )
    apns_key = ec.generate_private_key(ec.SECP256R1())
    google_key = _rsa()

    creds = Credentials(folder, ca_cert, wwdr_cert, pass_cert, pass_key, apns_key, google_key,
                        "wallet@stampweb-test.iam.gserviceaccount.com")
    creds.ca_pem.write_bytes(pem(ca_cert))
    creds.wwdr_pem.write_bytes(pem(wwdr_cert))
    creds.pass_cert_pem.write_bytes(pem(pass_cert))
    creds.pass_key_pem.write_bytes(key_pem(pass_key))
    creds.pass_p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"pass", pass_key, pass_cert, None,
        serialization.BestAvailableEncryption(p12_password.encode()),
    ))
    creds.apns_p8.write_bytes(key_pem(apns_key))
    creds.tls_cert.write_bytes(pem(tls_cert))
    creds.tls_key.write_bytes(key_pem(tls_key))
    return creds


def apple_config(creds: Credentials, **overrides) -> dict:
    """App config for Apple Wallet with the throwaway pass certificate."""
    return {
        "APPLE_PASS_TYPE_ID": PASS_TYPE_ID,
        "APPLE_TEAM_ID": TEAM_ID,
        "APPLE_PASS_CERT": str(creds.pass_cert_pem),
        "APPLE_PASS_KEY": str(creds.pass_key_pem),
        "APPLE_PASS_KEY_PASSWORD": None,
        "APPLE_WWDR_CERT": str(creds.wwdr_pem),
        "APNS_KEY_ID": None,
        "APNS_KEY": None,
        "APNS_CA_FILE": str(creds.ca_pem),
        **overrides,
    }


def openssl_verify(folder: Path, signature: bytes, manifest: bytes,
                   ca: Path) -> subprocess.CompletedProcess:
    """Check a detached pass signature with the OpenSSL command line."""
    sig_path, manifest_path = folder / "signature", folder / "manifest.json"
    sig_path.write_bytes(signature)
    manifest_path.write_bytes(manifest)
    return subprocess.run(
        ["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", str(sig_path),
         "-content", str(manifest_path), "-CAfile", str(ca), "-purpose", "any",
         "-out", "/dev/null"],
        capture_output=True, text=True, check=False,
    )


def openssl_signers(folder: Path, signature: bytes) -> str:
    """The certificates embedded in a CMS signature, as `openssl pkcs7 -print_certs` shows."""
    sig_path = folder / "signature-certs"
    sig_path.write_bytes(signature)
    return subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(sig_path), "-print_certs", "-noout"],
        capture_output=True, text=True, check=True,
    ).stdout


_shared: dict[str, Credentials] = {}


def shared_credentials(tmp_path_factory) -> Credentials:
    """One set of throwaway credentials per test session (RSA keys are slow to make)."""
    if "default" not in _shared:
        _shared["default"] = make_credentials(tmp_path_factory.mktemp("wallet-creds"))
    return _shared["default"]


def wallet_app(tmp_path, creds: Credentials | None, **overrides):
    """A unit app (SQLite + fakeredis) with Apple Wallet configured from `creds`."""
    from stampweb import create_app
    from stampweb.extensions import db

    from .conftest import unit_config

    config = {"BASE_URL": "https://cafe.test", "WALLET_COALESCE_SECONDS": 0}
    if creds is not None:
        config.update(apple_config(creds))
    config.update(overrides)
    application = create_app(unit_config(tmp_path, **config))
    with application.app_context():
        db.create_all()
    return application
