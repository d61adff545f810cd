"""stampweb: a self-hosted loyalty and retention platform for local businesses."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, g, request
from flask_login import current_user

from . import config as config_module
from . import embedded_redis, merchant_facts
from .database import configure_engine
from .extensions import (
    csrf,
    db,
    htmx,
    init_redis,
    limiter,
    login_manager,
    mail,
    migrate,
)
from .security import (
    init_input_guard,
    init_security_headers,
    reuse_checked_csrf_token,
    trust_proxy_headers,
)
from .tenancy import set_tenant

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict | None = None) -> Flask:
    """Build the application. `config` overrides the environment (tests use it)."""
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.update(config_module.load_from_environment())
    if config:
        app.config.update(config)
    instance = Path(app.config["INSTANCE_PATH"])
    instance.mkdir(parents=True, exist_ok=True)
    app.instance_path = str(instance)

    if not app.config.get("REDIS_URL"):
        app.config["REDIS_URL"] = embedded_redis.ensure_running(instance)
    app.config.setdefault("RATELIMIT_STORAGE_URI", _limiter_storage(app.config["REDIS_URL"]))
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)

    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine, checkpoint_ms=app.config["SQLITE_CHECKPOINT_MS"])
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True)
    login_manager.init_app(app)
    mail.init_app(app)
    csrf.init_app(app)
    reuse_checked_csrf_token(app)
    limiter.init_app(app)
    htmx.init_app(app)
    init_redis(app)

    from .i18n import init_i18n

    init_i18n(app)
    init_security_headers(app)
    init_input_guard(app)
    trust_proxy_headers(app)

    from .web import register_blueprints

    register_blueprints(app)
    from .wallet.updates import init_wallet; init_wallet(app)  # noqa: E702, I001

    from .cli import register_cli

    register_cli(app)

    @app.before_request
    def _scope_request_to_merchant():
        # Logged-in merchant users act for their own merchant only; public
        # pages (join, card, preferences) set the tenant from what they load.
        if current_user.is_authenticated:
            set_tenant(current_user.merchant_id)
            g.merchant = current_user.merchant
            merchant_facts.remember(g.merchant)
        else:
            g.merchant = None

    app.jinja_env.globals["is_htmx"] = lambda: bool(request.headers.get("HX-Request"))
    return app


def _limiter_storage(redis_url: str) -> str:
    if redis_url.startswith("fakeredis://"):
        return "memory://"
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url
