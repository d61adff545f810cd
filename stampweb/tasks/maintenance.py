"""Periodic housekeeping jobs."""

from __future__ import annotations

from ..extensions import redis_client
from .queues import job


@job
def heartbeat() -> str:
    """A cheap job run by `rq cron` every minute: proves cron and a worker both live."""
    redis_client().set("stampweb:cron:last-heartbeat", "1", ex=300)
    return "ok"
