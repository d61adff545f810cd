"""Campaign jobs: fan-out, send batches, and the reconciler cron runs every minute."""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models.campaigns import CAMPAIGN_SCHEDULED, CAMPAIGN_SENDING, Campaign
from ..tenancy import set_tenant, unscoped
from .queues import job


@job
def fanout_job(merchant_id: int, campaign_id: int) -> int:
    from ..campaigns import sending

    set_tenant(merchant_id)
    return sending.fanout(campaign_id)


@job
def send_batch_job(merchant_id: int, campaign_id: int, message_ids: list[int]) -> dict:
    from ..campaigns import sending

    # The tenant comes from the job's row references; a job for merchant A
    # can't read merchant B's customers.
    set_tenant(merchant_id)
    return sending.send_batch(campaign_id, message_ids)


@job
def reconcile_job() -> dict:
    """Per merchant with campaigns in flight: expire leases, requeue, start scheduled."""
    from ..campaigns import sending

    with unscoped():
        merchant_ids = db.session.scalars(
            select(Campaign.merchant_id).where(
                Campaign.status.in_((CAMPAIGN_SENDING, CAMPAIGN_SCHEDULED))
            ).distinct()
        ).all()
    totals: dict[str, int] = {}
    for merchant_id in merchant_ids:
        set_tenant(merchant_id)
        for key, value in sending.reconcile().items():
            totals[key] = totals.get(key, 0) + value
    set_tenant(None)
    return totals
