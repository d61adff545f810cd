"""Merchants and their users: creation, authentication, passwords."""

from __future__ import annotations

import functools
import re
import secrets
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask_babel import gettext as _
from sqlalchemy import select

from .database import begin_write
from .extensions import db
from .i18n import LANGUAGES
from .models import ROLE_OWNER, ROLES, Location, Merchant, Program, User, utcnow
from .security import check_password, hash_password
from .tenancy import tenant, unscoped

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MIN_PASSWORD_LENGTH = 10


class AccountError(ValueError):
    """Bad input for an account operation; `field` names the form field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def normalize_email(email: str) -> str:
    return email.strip().lower()


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            "password", _("Use at least %(num)d characters.", num=MIN_PASSWORD_LENGTH)
        )


def create_merchant(
    *,
    name: str,
    slug: str,
    timezone: str = "UTC",
    locale: str = "en",
    owner_email: str,
    owner_password: str,
    owner_name: str = "",
) -> Merchant:
    """Create a merchant with its program, a first location and its owner."""
    slug = slug.strip().lower()
    if not SLUG_RE.match(slug):
        raise AccountError("slug", _("Use lower-case letters, digits and dashes."))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AccountError("timezone", _("Unknown time zone %(zone)r.", zone=timezone)) from exc
    if locale not in LANGUAGES:
        raise AccountError("locale", _("Choose one of %(choices)s.", choices=", ".join(LANGUAGES)))
    if db.session.scalar(select(Merchant.id).filter_by(slug=slug)) is not None:
        raise AccountError("slug", _("The slug %(slug)r is taken.", slug=slug))
    merchant = Merchant(name=name.strip(), slug=slug, timezone=timezone, locale=locale)
    db.session.add(merchant)
    db.session.flush()
    with tenant(merchant.id):
        db.session.add(Program(merchant_id=merchant.id))
        db.session.add(Location(merchant_id=merchant.id, name=name.strip()))
        create_user(
            merchant_id=merchant.id,
            email=owner_email,
            password=owner_password,
            role=ROLE_OWNER,
            name=owner_name,
        )
    return merchant


def create_user(
    *, merchant_id: int, email: str, password: str, role: str, name: str = ""
) -> User:
    email = normalize_email(email)
    if "@" not in email:
        raise AccountError("email", _("Enter an email address."))
    if role not in ROLES:
        raise AccountError("role", _("Choose one of %(choices)s.", choices=", ".join(ROLES)))
    validate_password(password)
    with unscoped():
        if db.session.scalar(select(User.id).filter_by(email=email)) is not None:
            raise AccountError("email", _("A user with this email already exists."))
    user = User(
        merchant_id=merchant_id,
        email=email,
        name=name.strip(),
        role=role,
        password_hash=hash_password(password),
    )
    db.session.add(user)
    db.session.flush()
    return user


def authenticate(email: str, password: str) -> User | None:
    """The active user with this email and password, or None.

    Looks across merchants (an email is unique platform-wide) and upgrades an
    outdated password hash on success.
    """
    with unscoped():
        user = db.session.scalar(select(User).filter_by(email=normalize_email(email)))
    if user is None:
        # Spend the same time as a real check so timing does not reveal accounts.
        check_password(_dummy_hash(), password)
        return None
    ok, new_hash = check_password(user.password_hash, password)
    if not ok or not user.active:
        return None
    user_id = user.id
    with tenant(user.merchant_id):
        # Simultaneous logins must queue for the write, not fail on SQLite.
        begin_write()
        user = db.session.get(User, user_id, populate_existing=True)
        if new_hash:
            user.password_hash = new_hash
        user.last_login_at = utcnow()
        db.session.commit()
    return user


def change_password(user: User, new_password: str) -> None:
    """Set a new password and log out every other session of this user."""
    validate_password(new_password)
    user.password_hash = hash_password(new_password)
    user.session_token = secrets.token_hex(16)
    db.session.commit()


def set_language(user: User, locale: str | None) -> None:
    """The language `user` works in; None (or "") follows the merchant's default."""
    if locale and locale not in LANGUAGES:
        raise AccountError("locale", _("Choose one of %(choices)s.", choices=", ".join(LANGUAGES)))
    user.locale = locale or None
    db.session.commit()


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))
