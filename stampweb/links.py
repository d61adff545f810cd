"""Signed links sent to customers: preferences, one-click unsubscribe, email confirmation.

Each purpose has its own salt, so a token made for one purpose never opens
another. Signing uses `[*SECRET_KEY_FALLBACKS, SECRET_KEY]`: the newest key
signs, and links already sent keep working after a key rotation.

Unsubscribe tokens never expire (RFC 8058 links sit in old emails for months
and must still work); preference links expire; confirmation links last a week.

URLs are built from BASE_URL, not url_for(_external=True), so RQ jobs with no
request (and no SERVER_NAME) can put them in emails. The paths must match the
routes in stampweb/web/customer/routes.py.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from dataclasses import dataclass

from flask import current_app
from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.signer import HMACAlgorithm

PREFS_MAX_AGE = 90 * 24 * 3600
CONFIRM_MAX_AGE = 7 * 24 * 3600

_PREFS_SALT = "stampweb.prefs"
_UNSUBSCRIBE_SALT = "stampweb.unsubscribe"
_CONFIRM_SALT = "stampweb.confirm-email"

UNSUBSCRIBE_CHANNELS = ("all", "email", "wallet", "reminders")


class LinkExpired(Exception):
    """The link was ours but is too old. `customer_id`/`merchant_id` say whose it was."""

    def __init__(self, customer_id: int, merchant_id: int):
        super().__init__("link expired")
        self.customer_id = customer_id
        self.merchant_id = merchant_id


class LinkInvalid(Exception):
    """The link was not made by us (or was mangled on the way)."""


@dataclass(frozen=True)
class LinkTarget:
    customer_id: int
    merchant_id: int
    channel: str = "all"


def _keys() -> list[str]:
    config = current_app.config
    return [*config.get("SECRET_KEY_FALLBACKS", []), config["SECRET_KEY"]]


def _timed(salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_keys(), salt=salt)


def _untimed(salt: str) -> URLSafeSerializer:
    return URLSafeSerializer(_keys(), salt=salt)


def _ids(payload) -> tuple[int, int]:
    if (
        not isinstance(payload, list)
        or len(payload) < 2
        or not all(isinstance(v, int) for v in payload[:2])
    ):
        raise LinkInvalid("unexpected payload")
    return payload[0], payload[1]


def _load_timed(salt: str, token: str, max_age: int) -> LinkTarget:
    try:
        payload = _timed(salt).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        # The signature was good, only old: we know whose link it was.
        try:
            payload = _timed(salt).load_payload(exc.payload)
        except BadData as bad:
            raise LinkInvalid(str(bad)) from bad
        customer_id, merchant_id = _ids(payload)
        raise LinkExpired(customer_id, merchant_id) from exc
    except BadData as exc:
        raise LinkInvalid(str(exc)) from exc
    customer_id, merchant_id = _ids(payload)
    return LinkTarget(customer_id, merchant_id)


# --- tokens -------------------------------------------------------------------


def prefs_token(customer_id: int, merchant_id: int) -> str:
    return _timed(_PREFS_SALT).dumps([customer_id, merchant_id])


def verify_prefs_token(token: str) -> LinkTarget:
    """Whose preferences page this is; raises LinkExpired or LinkInvalid."""
    return _load_timed(_PREFS_SALT, token, PREFS_MAX_AGE)


def confirm_token(customer_id: int, merchant_id: int) -> str:
    return _timed(_CONFIRM_SALT).dumps([customer_id, merchant_id])


def verify_confirm_token(token: str) -> LinkTarget:
    return _load_timed(_CONFIRM_SALT, token, CONFIRM_MAX_AGE)


def unsubscribe_token(customer_id: int, merchant_id: int, channel: str = "all") -> str:
    """A token that never expires: unsubscribing must work from any old email."""
    if channel not in UNSUBSCRIBE_CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    return _untimed(_UNSUBSCRIBE_SALT).dumps([customer_id, merchant_id, channel])


def verify_unsubscribe_token(token: str) -> LinkTarget:
    try:
        payload = _untimed(_UNSUBSCRIBE_SALT).loads(token)
    except BadData as exc:
        raise LinkInvalid(str(exc)) from exc
    customer_id, merchant_id = _ids(payload)
    channel = payload[2] if len(payload) > 2 else "all"
    if channel not in UNSUBSCRIBE_CHANNELS:
        raise LinkInvalid("unknown channel")
    return LinkTarget(customer_id, merchant_id, channel)


# --- absolute URLs ----------------------------------------------------------------


def absolute(path: str) -> str:
    """BASE_URL + path; works in RQ jobs and CLI commands as well as in requests."""
    return current_app.config["BASE_URL"].rstrip("/") + path


def prefs_url(customer) -> str:
    return absolute(f"/prefs/{prefs_token(customer.id, customer.merchant_id)}")


def unsubscribe_url(customer, channel: str = "all") -> str:
    return absolute(f"/u/{unsubscribe_token(customer.id, customer.merchant_id, channel)}")


def confirm_url(customer) -> str:
    return absolute(f"/confirm/{confirm_token(customer.id, customer.merchant_id)}")


def card_url(card) -> str:
    """The customer's own card page."""
    return absolute(f"/card/{card.token}")


class BulkLinks:
    """prefs_url() and unsubscribe_url() for the many customers of a send batch.

    The functions above build an itsdangerous serializer and signer and a
    JSON encoder for every token: ~45 µs a token, two tokens an email. Here
    the signers are made once, and the payload (a list of ids) is encoded the
    way itsdangerous's URL-safe serializer does it (compact JSON, zlib only
    when shorter, base64), so each token is the same string the functions
    above make (tests/test_links_bulk.py) and verifies the same way.
    """

    def __init__(self, unsubscribe_channel: str = "all"):
        if unsubscribe_channel not in UNSUBSCRIBE_CHANNELS:
            raise ValueError(f"unknown channel {unsubscribe_channel!r}")
        self._base = current_app.config["BASE_URL"].rstrip("/")
        fast = {"algorithm": _OneShotHmacSha1()}
        self._prefs = _key_derived_once(URLSafeTimedSerializer(
            _keys(), salt=_PREFS_SALT, signer_kwargs=fast).make_signer(_PREFS_SALT))
        self._unsubscribe = _key_derived_once(URLSafeSerializer(
            _keys(), salt=_UNSUBSCRIBE_SALT, signer_kwargs=fast).make_signer(_UNSUBSCRIBE_SALT))
        self._channel = unsubscribe_channel

    def card_url(self, card) -> str:
        """card_url(), without looking the base URL up in the app's config each time."""
        return f"{self._base}/card/{card.token}"

    def prefs_url(self, customer) -> str:
        payload = _url_safe_payload(f"[{int(customer.id)},{int(customer.merchant_id)}]")
        return f"{self._base}/prefs/{self._prefs.sign(payload).decode('ascii')}"

    def unsubscribe_url(self, customer) -> str:
        payload = _url_safe_payload(
            f'[{int(customer.id)},{int(customer.merchant_id)},"{self._channel}"]')
        return f"{self._base}/u/{self._unsubscribe.sign(payload).decode('ascii')}"


def _key_derived_once(signer):
    """`signer`, deriving its signing key once instead of on every signature.

    itsdangerous hashes the salt and the newest secret key anew for each
    token it signs, a third of the cost of signing one. The key is the same
    every time, so the tokens are too; a key asked for explicitly (to check
    a token against an older secret) is still derived as before.
    """
    derive = signer.derive_key
    key = derive()
    signer.derive_key = lambda secret_key=None: key if secret_key is None else derive(secret_key)
    return signer


class _OneShotHmacSha1(HMACAlgorithm):
    """itsdangerous's default HMAC-SHA1, computed by OpenSSL in one call.

    The default passes itsdangerous's own sha1 wrapper to hmac.new(), which
    makes the standard library fall back to its pure-Python HMAC: two hash
    objects and a key pad per token. hmac.digest() with the name gives the
    same bytes.
    """

    def __init__(self):
        super().__init__(hashlib.sha1)

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha1")


def _url_safe_payload(json: str) -> bytes:
    """itsdangerous URLSafeSerializerMixin.dump_payload() of already-compact JSON."""
    data = json.encode("ascii")
    compressed = zlib.compress(data)
    if len(compressed) < len(data) - 1:
        return b"." + base64_encode(compressed)
    return base64_encode(data)

