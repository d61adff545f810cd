"""Jobs for emails a customer is waiting for (the TRANSACTIONAL queue)."""

from __future__ import annotations

from ..messaging.transactional import deliver_card_link_email, deliver_confirmation_email
from .queues import job


@job
def send_confirmation_email(customer_id: int) -> str:
    """The double opt-in link; sets the tenant from the customer row itself."""
    return deliver_confirmation_email(customer_id)


@job
def send_card_link_email(customer_id: int) -> str:
    """The card and preferences links, for a member who asked again."""
    return deliver_card_link_email(customer_id)
