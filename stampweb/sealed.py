"""Secrets at rest: merchants' private keys and service-account files, sealed in the database.

A database dump or a replica should not hand out a merchant's Apple signing
key or Google service account. Such columns use `SealedText`: the value is
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) before
it is written, and opened when it is read.

The keys are derived (HKDF) from SECRET_KEY and SECRET_KEY_FALLBACKS, so there
is nothing new to configure, and rotation works the way it does for sessions:
put the old SECRET_KEY in SECRET_KEY_FALLBACKS, and values sealed under it
still open (and are sealed under the new key the next time they are saved).

A value that no configured key opens (SECRET_KEY replaced with no fallback)
reads as missing, with an error in the log: the wallet settings page then
shows that credential as not uploaded, instead of every page failing.
Plain text written before sealing existed is read as it is.
"""

from __future__ import annotations

import base64
import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

# Every Fernet token starts with its version byte 0x80, which base64 writes as "gAAAAA".
_TOKEN_PREFIX = "gAAAAA"
_INFO = b"stampweb sealed credentials v1"


def _fernet_key(secret: str) -> bytes:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode())
    return base64.urlsafe_b64encode(derived)


def _fernet() -> MultiFernet:
    config = current_app.config
    secrets = [config["SECRET_KEY"], *config.get("SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([Fernet(_fernet_key(secret)) for secret in secrets])


def seal(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def unseal(stored: str) -> str | None:
    if not stored.startswith(_TOKEN_PREFIX):
        return stored  # written before sealing; sealed on its next save
    try:
        return _fernet().decrypt(stored.encode()).decode()
    except InvalidToken:
        log.error("a sealed credential opens with none of the configured keys; "
                  "was SECRET_KEY changed without SECRET_KEY_FALLBACKS?")
        return None


class SealedText(TypeDecorator):
    """Text encrypted at rest; Python code only ever sees the plain value."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else seal(value)

    def process_result_value(self, value, dialect):
        return None if value is None else unseal(value)
