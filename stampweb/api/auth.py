"""API keys: making, revoking and checking them, and the per-key rate limit's key.

A key is `sw_live_` followed by 32 random bytes in base62. It is shown once;
the database keeps its first characters (to find the row and to show in the
admin) and the SHA-256 of the whole key, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import timedelta

from flask import request
from flask_babel import gettext as _
from flask_limiter.util import get_remote_address
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from ..database import begin_write
from ..extensions import db
from ..models import ApiKey, Merchant, utcnow
from ..models.api import API_SCOPES, SCOPE_WRITE
from ..tenancy import tenant, unscoped

KEY_PREFIX = "sw_live_"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_RANDOM_LENGTH = 43  # 32 bytes in base62
LOOKUP_LENGTH = len(KEY_PREFIX) + 8
KEY_RE = re.compile(rf"^{KEY_PREFIX}[0-9A-Za-z]{{{_RANDOM_LENGTH}}}$")
NAME_MAX = 80
# Writing last_used_at on every call would make every API request a writer.
LAST_USED_GRANULARITY = timedelta(minutes=1)


class ApiKeyError(ValueError):
    """Bad input for a key; `field` names the form field the message belongs to."""

    def __init__(self, field: str, message):
        super().__init__(str(message))
        self.field = field
        self.message = message


@dataclass(frozen=True)
class NewKey:
    api_key_id: int
    key: str  # shown once, never stored
    prefix: str
    name: str
    scope: str


def _base62(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_BASE62[rest])
    return "".join(reversed(digits)).rjust(_RANDOM_LENGTH, "0")


def generate_key() -> str:
    return KEY_PREFIX + _base62(secrets.token_bytes(32))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _clean_name(name: str | None) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ApiKeyError("name", _("Give the key a name, e.g. the till it is for."))
    if len(name) > NAME_MAX:
        raise ApiKeyError("name", _("At most %(num)d characters.", num=NAME_MAX))
    return name


def create_key(
    merchant_id: int,
    name: str,
    scope: str = SCOPE_WRITE,
    *,
    created_by_user_id: int | None = None,
) -> NewKey:
    """Make a key for the merchant and commit it; the returned `key` is its only copy."""
    name = _clean_name(name)
    if scope not in API_SCOPES:
        raise ApiKeyError("scope", _("Choose read or write."))
    with tenant(merchant_id):
        if db.session.get(Merchant, merchant_id) is None:
            raise ApiKeyError("merchant", _("No such merchant."))
        for attempt in range(3):
            key = generate_key()
            row = ApiKey(
                merchant_id=merchant_id, name=name, prefix=key[:LOOKUP_LENGTH],
                key_hash=hash_key(key), scope=scope, created_by_user_id=created_by_user_id,
            )
            db.session.add(row)
            try:
                db.session.commit()
            except IntegrityError:
                # Two keys starting with the same 8 characters: draw again.
                db.session.rollback()
                if attempt == 2:
                    raise
                continue
            return NewKey(row.id, key, row.prefix, name, scope)
    raise AssertionError("unreachable")


def list_keys(merchant_id: int) -> list[ApiKey]:
    with tenant(merchant_id):
        return list(db.session.scalars(
            select(ApiKey).order_by(ApiKey.revoked_at.is_not(None), ApiKey.created_at.desc(),
                                    ApiKey.id.desc())
        ))


def revoke_key(merchant_id: int, api_key_id: int) -> bool:
    """Revoke one of the merchant's keys at once; False if it is unknown or revoked already."""
    with tenant(merchant_id):
        row = db.session.scalar(select(ApiKey).where(ApiKey.id == api_key_id))
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        db.session.commit()
    return True


def authenticate(key: str) -> ApiKey | None:
    """The active key matching `key`, or None. Never says which part was wrong."""
    if not KEY_RE.match(key or ""):
        return None
    with unscoped():
        row = db.session.scalar(select(ApiKey).where(ApiKey.prefix == key[:LOOKUP_LENGTH]))
    expected = row.key_hash if row is not None else hash_key("")
    matches = hmac.compare_digest(expected, hash_key(key))
    if row is None or not matches or row.revoked_at is not None:
        return None
    return row


def touch(api_key: ApiKey) -> None:
    """Remember when the key was last used, at most once a minute (commits)."""
    now = utcnow()
    if api_key.last_used_at is not None and now - api_key.last_used_at < LAST_USED_GRANULARITY:
        return
    try:
        # As a writer from the start: on SQLite, a read transaction that later
        # tries to write fails at once ("database is locked") under concurrency.
        begin_write()
        with unscoped():
            db.session.execute(
                ApiKey.__table__.update().where(ApiKey.id == api_key.id).values(last_used_at=now)
            )
        db.session.commit()
    except OperationalError:
        # A bookkeeping write must never fail the request it belongs to.
        db.session.rollback()


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def rate_limit_key() -> str:
    """Per key (its stored prefix) when the header carries one, else per client address."""
    token = bearer_token()
    if token and KEY_RE.match(token):
        return "api-key:" + token[:LOOKUP_LENGTH]
    return "api-ip:" + (get_remote_address() or "unknown")
