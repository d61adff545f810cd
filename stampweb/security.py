"""Password hashing, safe redirects and security headers."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import Flask, abort, current_app, g, has_app_context, request
from flask_babel import gettext as _
from werkzeug.middleware.proxy_fix import ProxyFix

from .extensions import csrf

# argon2id above OWASP's floor (19 MiB, 2 passes): 64 MiB, 3 passes.
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 64 * 1024


@functools.cache
def _hasher_for(time_cost: int, memory_kib: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=2)


def _hasher() -> PasswordHasher:
    """The configured hasher. Only the test suite lowers the cost (ARGON2_* settings),
    so that hundreds of logins don't take minutes; production never sets them."""
    config = current_app.config if has_app_context() else {}
    return _hasher_for(
        config.get("ARGON2_TIME_COST", ARGON2_TIME_COST),
        config.get("ARGON2_MEMORY_KIB", ARGON2_MEMORY_KIB),
    )


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def check_password(password_hash: str, password: str) -> tuple[bool, str | None]:
    """Verify a password; also return a new hash when the stored one is outdated.

    The caller saves the new hash, so parameters raised later reach every
    account at its next login.
    """
    hasher = _hasher()
    try:
        hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    if hasher.check_needs_rehash(password_hash):
        return True, hasher.hash(password)
    return True, None


def is_safe_next(target: str | None) -> bool:
    """Only local paths: '/x' yes; '//x', '/\\x', '\\\\x', 'https://x' no."""
    if not target or not target.startswith("/"):
        return False
    if target.startswith("//") or target.startswith("/\\"):
        return False
    if any(ch in target for ch in "\\\r\n\t"):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


# Pages that show a person's data are never kept by the browser or htmx's
# history cache; see also htmx's historyCacheSize=0 in base.html.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def init_security_headers(app: Flask) -> None:
    https = app.config["BASE_URL"].startswith("https://")

    @app.after_request
    def _headers(response):
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        if https:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if request.headers.get("HX-Request") is not None or response.mimetype == "text/html":
            # One URL serves both the full page and its htmx fragment.
            response.vary.add("HX-Request")
        return response


def reuse_checked_csrf_token(app: Flask) -> None:
    """After Flask-WTF has checked a POST's CSRF token, pages rendered for it carry that token.

    generate_csrf() signs the session's secret anew for each request that
    renders a form, which costs a twentieth of a staff stamp, whose answer
    holds the card's forms. The token just checked is as good: it signs the
    same secret, and WTF_CSRF_TIME_LIMIT is None, so its age does not matter.
    Register after csrf.init_app(app), whose check runs first.
    """
    field_name = app.config["WTF_CSRF_FIELD_NAME"]

    @app.before_request
    def _reuse_the_checked_token():
        if g.get("csrf_valid") and app.config["WTF_CSRF_TIME_LIMIT"] is None:
            # _get_csrf_token() is how protect() found the token it checked.
            setattr(g, field_name, csrf._get_csrf_token())


def init_input_guard(app: Flask) -> None:
    """Refuse form fields and query arguments that contain a NUL character.

    Nobody types one, SQLite would store it silently, and PostgreSQL refuses it
    with an error: a 500 in production for a form that passed every test.
    The JSON API validates its own input against its schemas.
    """

    @app.before_request
    def _refuse_nul():
        if request.path.startswith("/api/"):
            return
        if "\x00" in request.path:
            abort(404)
        fields = [request.args]
        if request.method == "POST":
            fields.append(request.form)
        for multidict in fields:
            if any("\x00" in key or "\x00" in value for key, value in multidict.items(multi=True)):
                abort(400, description=_(
                    "The form contained an invisible NUL character. "
                    "Remove it (retype the text) and send the form again."
                ))


def trust_proxy_headers(app: Flask) -> None:
    """Read the client's address and scheme from TRUSTED_PROXY_HOPS proxies' headers."""
    hops = app.config.get("TRUSTED_PROXY_HOPS") or 0
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
