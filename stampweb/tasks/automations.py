"""The automation engine's cron job: every 15 minutes, every merchant's switched-on flows."""

from __future__ import annotations

import logging

from ..models import utcnow
from .queues import job

log = logging.getLogger(__name__)


@job
def run_automations() -> dict:
    """Evaluate every flow that is on; idempotent, so a double or late run is harmless."""
    from ..automations import engine

    runs = engine.run(now=utcnow())
    fired = sum(len(run.firings) for run in runs)
    messages = sum(run.messages for run in runs)
    log.info("automations: %d flows evaluated, %d fired, %d messages", len(runs), fired, messages)
    return {"flows": len(runs), "fired": fired, "messages": messages}
