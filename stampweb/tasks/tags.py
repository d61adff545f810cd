"""The hourly job that recomputes every merchant's rule tags."""

from __future__ import annotations

import logging

from ..campaigns import tags
from .queues import job

log = logging.getLogger(__name__)


@job
def update_rule_tags() -> dict:
    """Recompute all rule tags; idempotent, so a double or late run is harmless."""
    updates = tags.update_tags()
    added = sum(update.added for update in updates)
    removed = sum(update.removed for update in updates)
    log.info("rule tags updated: %d tags, added %d, removed %d", len(updates), added, removed)
    return {"tags": len(updates), "added": added, "removed": removed}
