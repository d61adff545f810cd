"""Periodic housekeeping jobs."""

from __future__ import annotations

import logging

from sqlalchemy import select

from ..api import idempotency
from ..extensions import db, redis_client
from ..models import Merchant
from .queues import job

log = logging.getLogger(__name__)


@job
def heartbeat() -> str:
    """A cheap job run by `rq cron` every minute: proves cron and a worker both live."""
    redis_client().set("stampweb:cron:last-heartbeat", "1", ex=300)
    return "ok"


@job
def purge_idempotency_records() -> int:
    """Forget stored API answers past their retention, merchant by merchant.

    A POS retries within minutes; keeping answers for days is only for the
    audit of a dispute, and the table would otherwise grow with every POST.
    """
    merchant_ids = db.session.scalars(select(Merchant.id).order_by(Merchant.id)).all()
    removed = sum(idempotency.purge(merchant_id) for merchant_id in merchant_ids)
    log.info("idempotency records purged: %d", removed)
    return removed
