"""DKIM: with a key configured, outgoing mail carries a signature that verifies
and covers the one-click unsubscribe headers (RELIABILITY.md, item 2)."""

from __future__ import annotations

import re

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stampweb.messaging import dkim, transport

from . import servers
from .factories import gen_merchant

SELECTOR, DOMAIN = "stamp2026", "mail.example.org"


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_pem(path, key, pkcs8: bool = True):
    fmt = (serialization.PrivateFormat.PKCS8 if pkcs8
           else serialization.PrivateFormat.TraditionalOpenSSL)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                       serialization.NoEncryption()))
    return str(path)


@pytest.fixture
def dkim_app(app, tmp_path, rsa_key):
    app.config.update(
        DKIM_PRIVATE_KEY=write_pem(tmp_path / "dkim.pem", rsa_key),
        DKIM_SELECTOR=SELECTOR,
        DKIM_DOMAIN=DOMAIN,
        BASE_URL="https://loyalty.example.org",
    )
    return app


def dns_stub(key):
    """A resolver answering only our selector's TXT record with the test public key."""
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = dkim.DkimKey(SELECTOR, DOMAIN, b"", public).txt_record().encode()

    def lookup(name, timeout=5):
        assert name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        return record

    return lookup


def campaign_message(merchant):
    """A marketing email shaped like the campaign sender's, with the RFC 8058 headers."""
    return transport.build_message(
        merchant=merchant,
        to="ana@example.com",
        subject="Two for one this weekend — Ana",
        text="Hello Ana,\n\nTwo for one.\n\n-- \nUnsubscribe: https://x/u/abc\n",
        html="<p>Hello Ana,</p><p><strong>Two for one.</strong></p>",
        headers={
            "List-Unsubscribe": "<https://loyalty.example.org/u/abc>, "
                                "<mailto:unsubscribe@loyalty.example.org?subject=u-1>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": "Bean There <bean.loyalty.example.org>",
            "Precedence": "bulk",
        },
        message_id="m1.c1@loyalty.example.org",
    )


def signed_tags(raw: bytes) -> dict[str, str]:
    match = re.search(rb"^DKIM-Signature:(.*?)\r?\n(?![ \t])", raw, re.S | re.M)
    assert match, "no DKIM-Signature header"
    value = re.sub(r"\s+", "", match.group(1).decode())
    return dict(part.split("=", 1) for part in value.split(";") if part)


def test_signature_verifies_and_covers_list_unsubscribe(dkim_app, rsa_key):
    """The signed message, serialised as SMTP sends it, verifies against the DNS key,
    and h= names list-unsubscribe and list-unsubscribe-post (relaxed/relaxed)."""
    with dkim_app.app_context():
        msg = dkim.sign(campaign_message(gen_merchant(name="Bean There")))
        raw = transport_bytes(msg)
    assert raw.startswith(b"DKIM-Signature:"), "the signature is the first header"
    assert dkimpy.verify(raw, dnsfunc=dns_stub(rsa_key))
    tags = signed_tags(raw)
    signed = tags["h"].split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "list-id", "from", "to", "subject",
            "date", "message-id", "mime-version", "content-type"} <= set(signed)
    assert tags["c"] == "relaxed/relaxed"
    assert (tags["d"], tags["s"]) == (DOMAIN, SELECTOR)


def transport_bytes(msg) -> bytes:
    """Exactly what SmtpConnection puts on the wire for an ASCII envelope."""
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", utf8=False))


def bulk_campaign_message(merchant):
    """The same campaign email from the campaign sender's BulkComposer (raw bytes)."""
    composer = transport.BulkComposer(merchant, {
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{merchant.name} <bean.loyalty.example.org>",
        "Precedence": "bulk",
    })
    return composer.compose(
        to="ana@example.com", subject="Two for one this weekend — Ana",
        text="Hello Ana,\n\nTwo for one.\n\n-- \nUnsubscribe: https://x/u/abc\n",
        html="<p>Hello Ana,</p><p><strong>Two for one.</strong></p>",
        message_id="m1.c1@loyalty.example.org",
        headers={"List-Unsubscribe": "<https://loyalty.example.org/u/abc>, "
                                     "<mailto:unsubscribe@loyalty.example.org?subject=u-1>"},
    )


def test_bulk_message_signature_verifies_and_covers_list_unsubscribe(dkim_app, rsa_key):
    """The campaign sender's raw messages are signed over their exact bytes, with the
    same h= as the EmailMessage path, also for a merchant name that is not ASCII."""
    with dkim_app.app_context():
        key = dkim.configured_key()
        msg = dkim.sign_raw(bulk_campaign_message(gen_merchant(name="Café Crème")), key)
    assert msg.data.startswith(b"DKIM-Signature:")
    assert dkimpy.verify(msg.data, dnsfunc=dns_stub(rsa_key))
    signed = signed_tags(msg.data)["h"].split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "list-id", "from", "to", "subject",
            "date", "message-id", "mime-version", "content-type"} <= set(signed)


def test_changing_the_unsubscribe_header_breaks_the_signature(dkim_app, rsa_key):
    """A relay that rewrote List-Unsubscribe would fail verification: the header is signed."""
    with dkim_app.app_context():
        msg = dkim.sign(campaign_message(gen_merchant()))
        raw = transport_bytes(msg)
    tampered = raw.replace(b"https://loyalty.example.org/u/abc", b"https://evil.example/u/abc")
    assert tampered != raw
    assert not dkimpy.verify(tampered, dnsfunc=dns_stub(rsa_key))


def test_signing_twice_keeps_one_valid_signature(dkim_app, rsa_key):
    """Signing a message again (a retried send) replaces the old signature."""
    with dkim_app.app_context():
        msg = dkim.sign(dkim.sign(campaign_message(gen_merchant())))
        raw = transport_bytes(msg)
    assert raw.count(b"DKIM-Signature:") == 1
    assert dkimpy.verify(raw, dnsfunc=dns_stub(rsa_key))


def test_pkcs1_keys_work_too(app, tmp_path, rsa_key):
    """`openssl genrsa` (PKCS#1) and `openssl genpkey` (PKCS#8) files both sign."""
    app.config.update(DKIM_PRIVATE_KEY=write_pem(tmp_path / "k.pem", rsa_key, pkcs8=False),
                      DKIM_SELECTOR=SELECTOR, DKIM_DOMAIN=DOMAIN)
    with app.app_context():
        raw = transport_bytes(dkim.sign(campaign_message(gen_merchant())))
    assert dkimpy.verify(raw, dnsfunc=dns_stub(rsa_key))


def test_without_configuration_mail_is_unsigned(app):
    with app.app_context():
        msg = dkim.sign(campaign_message(gen_merchant()))
    assert "DKIM-Signature" not in msg


@pytest.mark.parametrize("problem", ["half", "missing file", "not rsa"])
def test_unusable_key_postpones_the_send(app, tmp_path, problem):
    """A broken DKIM setup is a temporary failure: retried later, never sent unsigned
    and never mistaken for a delivered message."""
    config = {"DKIM_PRIVATE_KEY": str(tmp_path / "absent.pem"), "DKIM_SELECTOR": SELECTOR,
              "DKIM_DOMAIN": DOMAIN}
    if problem == "half":
        config["DKIM_DOMAIN"] = None
    elif problem == "not rsa":
        config["DKIM_PRIVATE_KEY"] = write_pem(tmp_path / "ec.pem",
                                               ec.generate_private_key(ec.SECP256R1()))
    app.config.update(config)
    with app.app_context():
        msg = campaign_message(gen_merchant())
        with pytest.raises(transport.TemporaryFailure) as caught:
            dkim.sign(msg)
    assert not caught.value.maybe_sent
    assert "DKIM-Signature" not in msg


@pytest.mark.integration
def test_message_received_over_smtp_verifies(dkim_app, rsa_key):
    """Signed, then sent through the SMTP transport: the bytes the server received verify."""
    with servers.SmtpSink() as sink, dkim_app.app_context():
        dkim_app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=sink.port, MAIL_TIMEOUT=5)
        merchant = gen_merchant()
        msg = dkim.sign(campaign_message(merchant))
        with transport.open_connection() as connection:
            connection.send(msg)
            # The campaign sender's raw messages are signed by the connection itself.
            connection.send(bulk_campaign_message(merchant))
        received = sink.messages
    assert len(received) == 2
    for message in received:
        assert dkimpy.verify(message.raw, dnsfunc=dns_stub(rsa_key))
        assert "list-unsubscribe-post" in signed_tags(message.raw)["h"].split(":")
