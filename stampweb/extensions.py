"""Extensions created unbound at import time and bound in create_app()."""

from __future__ import annotations

import redis
from flask import Flask, current_app
from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_mail import Mail
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
from sqlalchemy import MetaData

# Stable constraint names, so that alembic migrations can name what they drop
# and autogenerate agrees on SQLite and PostgreSQL alike.
naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=naming_convention))
migrate = Migrate()
login_manager = LoginManager()
mail = Mail()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=[])
babel = Babel()
htmx = Htmx()


def init_redis(app: Flask) -> None:
    """Bind one Redis client per app; RQ, health checks and the limiter share the URL."""
    url = app.config["REDIS_URL"]
    if url.startswith("fakeredis://"):
        import fakeredis

        client = fakeredis.FakeRedis(server=fakeredis.FakeServer.get_server(url, (7,), "redis"))
    else:
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    app.extensions["stampweb_redis"] = client


def redis_client() -> redis.Redis:
    return current_app.extensions["stampweb_redis"]
