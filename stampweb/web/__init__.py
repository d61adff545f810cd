"""Blueprints, one per actor, and what they share: role checks and error pages."""

from __future__ import annotations

from collections.abc import Iterator
from functools import wraps

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
)
from flask_babel import gettext as _
from flask_login import current_user, login_required
from flask_wtf.csrf import CSRFError

from ..models import ROLE_MANAGER, ROLE_OWNER, ROLE_STAFF


def role_required(role: str):
    """Let in logged-in users whose role is at least `role`; others get 403."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if not current_user.has_role(role):
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


staff_required = role_required(ROLE_STAFF)
manager_required = role_required(ROLE_MANAGER)
owner_required = role_required(ROLE_OWNER)


def wants_json() -> bool:
    return request.path.startswith(("/api/", "/wallet/")) or (
        request.accept_mimetypes.best == "application/json"
    )


def _error_page(status: int, message: str | None = None):
    if wants_json():
        return jsonify(error=message or str(status), status=status), status
    return render_template(f"errors/{status}.html", message=message), status


def too_large_page():
    """413: a body over MAX_CONTENT_LENGTH, or text fields over MAX_FORM_MEMORY_SIZE."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
    return _error_page(413, _("Files can be up to %(mb)s MB.", mb=limit // (1024 * 1024)))


def csv_download(chunks: Iterator[str], filename: str) -> Response:
    """Stream CSV text chunks as a file download that no cache keeps."""
    response = Response(stream_with_context(chunks), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def _csrf_error(error):
        return _error_page(400, error.description)

    @app.errorhandler(400)
    def _bad_request(error):
        return _error_page(400, getattr(error, "description", None))

    @app.errorhandler(403)
    def _forbidden(_error):
        return _error_page(403)

    @app.errorhandler(404)
    def _not_found(_error):
        return _error_page(404)

    @app.errorhandler(413)
    def _too_large(_error):
        return too_large_page()

    @app.errorhandler(429)
    def _too_many(error):
        return _error_page(429, getattr(error, "description", None))

    @app.errorhandler(500)
    def _server_error(_error):
        from ..extensions import db

        db.session.rollback()
        return _error_page(500)


def register_blueprints(app: Flask) -> None:
    from .auth import bp as auth_bp
    from .customer import bp as customer_bp
    from .health import bp as health_bp
    from .merchant import bp as merchant_bp
    from .passkit import bp as passkit_bp
    from .staff import bp as staff_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(merchant_bp)
    app.register_blueprint(staff_bp)
    app.register_blueprint(customer_bp)
    app.register_blueprint(passkit_bp)
    from ..api import bp as api_bp
    app.register_blueprint(api_bp)
    register_error_handlers(app)
