"""DKIM signatures on outgoing mail (dkimpy), when a key is configured.

Set DKIM_PRIVATE_KEY (path to an RSA private key in PEM, PKCS#1 or PKCS#8),
DKIM_SELECTOR and DKIM_DOMAIN, and publish `txt_record()` at
`<selector>._domainkey.<domain>`. With none of them set, mail goes unsigned.

The signature covers the headers a receiver judges a bulk message by,
including List-Unsubscribe and List-Unsubscribe-Post: RFC 8058 one-click
unsubscribe is only honoured when both are signed (RELIABILITY.md, item 2).
Canonicalisation is relaxed/relaxed, so re-folding of headers or trailing
whitespace added in transit does not break it.

The signature is computed over exactly the bytes the SMTP transport sends
(CRLF line ends, non-UTF8 policy) and inserted as a pre-folded raw header,
so serialising the message again reproduces the signed bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from dataclasses import dataclass
from email.message import EmailMessage

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import current_app

# Lower-case, in the order they appear in h=. Only the ones the message has
# are listed (List-* headers are on marketing mail, not on transactional).
SIGNED_HEADERS = (
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "list-unsubscribe", "list-unsubscribe-post", "list-id",
)
HEADER_NAME = "DKIM-Signature"
MIN_KEY_BITS = 1024


class DkimKeyError(ValueError):
    """DKIM is configured but its key can't be used."""


@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str
    # The private key as PKCS#1 PEM, the form dkimpy reads.
    private_pem: bytes
    public_der: bytes

    def txt_record(self) -> str:
        """The DNS TXT value to publish at `<selector>._domainkey.<domain>`."""
        return f"v=DKIM1; k=rsa; p={base64.b64encode(self.public_der).decode()}"


def load_key(path: str, selector: str, domain: str) -> DkimKey:
    """Read an RSA private key (PEM, unencrypted) for signing as selector/domain."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DkimKeyError(f"cannot read DKIM_PRIVATE_KEY {path}: {exc}") from exc
    return _parse_key(data, selector, domain)


@functools.lru_cache(maxsize=4)
def _parse_key(data: bytes, selector: str, domain: str) -> DkimKey:
    # Cached by content: a batch of 300 messages parses the key once.
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(f"DKIM_PRIVATE_KEY is not an unencrypted PEM key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimKeyError("DKIM_PRIVATE_KEY must be an RSA key")
    if key.key_size < MIN_KEY_BITS:
        raise DkimKeyError(f"DKIM key has {key.key_size} bits; receivers want at least 1024")
    return DkimKey(
        selector=selector,
        domain=domain,
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        public_der=key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def configured_key() -> DkimKey | None:
    """The app's DKIM key, or None when DKIM is not configured.

    Raises DkimKeyError when it is half configured or the key is unusable.
    """
    config = current_app.config
    values = {
        name: config.get(name) for name in ("DKIM_PRIVATE_KEY", "DKIM_SELECTOR", "DKIM_DOMAIN")
    }
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise DkimKeyError(f"DKIM is half configured: set {', '.join(missing)} too")
    return load_key(values["DKIM_PRIVATE_KEY"], values["DKIM_SELECTOR"], values["DKIM_DOMAIN"])


def wire_bytes(msg: EmailMessage) -> bytes:
    """The message as the SMTP transport sends it (CRLF line ends)."""
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def sign(msg: EmailMessage, key: DkimKey | None = None) -> EmailMessage:
    """Add a DKIM-Signature (first header) when a key is configured; return `msg`.

    Signing again replaces the earlier signature. A configured key that cannot
    be used raises transport.TemporaryFailure: the send is retried later
    rather than going out unsigned or being lost.
    """
    if key is None:
        try:
            key = configured_key()
        except DkimKeyError as exc:
            from .transport import TemporaryFailure

            raise TemporaryFailure(str(exc)) from exc
    if key is None:
        return msg
    del msg[HEADER_NAME]
    present = [name for name in SIGNED_HEADERS if name in msg]
    signature = dkimpy.sign(
        wire_bytes(msg),
        key.selector.encode(),
        key.domain.encode(),
        key.private_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[name.encode() for name in present],
    )
    # dkimpy returns "DKIM-Signature: v=1; …" folded at 72 columns. Kept as a
    # raw header, the email package writes it back unchanged (it only refolds
    # lines over 78), which is what keeps the signed bytes and the sent bytes equal.
    name, value = msg.policy.header_source_parse(signature.decode("ascii").splitlines(True))
    # Receivers expect the signature on top; set_raw only appends, so re-add the rest after it.
    others = list(msg.raw_items())
    for header in {n for n, _v in others}:
        del msg[header]
    msg.set_raw(name, value)
    for header, header_value in others:
        msg.set_raw(header, header_value)
    return msg


def sign_raw(msg, key: DkimKey):
    """A transport.RawMessage with a DKIM-Signature on top, signed over its exact bytes."""
    present = [name for name in SIGNED_HEADERS if name in msg.header_names]
    signature = dkimpy.sign(
        msg.data,
        key.selector.encode(),
        key.domain.encode(),
        key.private_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[name.encode() for name in present],
        linesep=b"\r\n",
    )
    return dataclasses.replace(msg, data=signature + msg.data,
                               header_names=msg.header_names | {HEADER_NAME.lower()})


__all__ = ["DkimKey", "DkimKeyError", "SIGNED_HEADERS", "configured_key", "load_key", "sign",
           "sign_raw"]
