"""/healthz: is the database, Redis and at least one worker alive?"""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from ..extensions import db, limiter, redis_client
from ..tasks.queues import live_worker_count

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@limiter.exempt
def healthz():
    checks = {"database": False, "redis": False, "worker": False}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:  # noqa: BLE001 - any failure means "down"
        db.session.rollback()
    try:
        checks["redis"] = bool(redis_client().ping())
        checks["worker"] = live_worker_count(redis_client()) > 0
    except Exception:  # noqa: BLE001
        pass
    status = 200 if all(checks.values()) else 503
    return jsonify({**checks, "status": "ok" if status == 200 else "degraded"}), status
