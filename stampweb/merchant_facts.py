"""What the request's merchant has set up that a stamp's events must act on.

Every stamp sends card_changed and visit_recorded, and their listeners ask two
questions of the merchant: has it wallet settings of its own (a pass to update,
see wallet.credentials.could_be_ready), and an active webhook endpoint (a
delivery to enqueue, see webhooks)? Asked in SQL after the stamp's commit, the
answers cost two look-ups and a transaction of their own on every tap, for the
many merchants that have neither.

The answers come instead with the merchant row every logged-in request loads
anyway (the user's merchant is joined): two EXISTS on indexed columns, mapped
on Merchant in models/__init__.py. `remember()` keeps them for the request as
plain values, before a service's commit expires the row. A merchant who sets up
a wallet or a webhook is seen by the next request, as before. Outside a
request (jobs, the API, the CLI), or for another merchant, `known()` says None
and the listeners ask SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import g, has_request_context

_KEY = "merchant_facts"


@dataclass(frozen=True)
class MerchantFacts:
    merchant_id: int
    has_wallet_settings: bool
    has_active_webhooks: bool


def remember(merchant) -> None:
    """Keep this request's merchant's facts (call while the row is fresh)."""
    g.setdefault(_KEY, MerchantFacts(
        merchant.id, bool(merchant.has_wallet_settings), bool(merchant.has_active_webhooks)
    ))


def known(merchant_id: int) -> MerchantFacts | None:
    """The facts remembered in this request for this merchant, else None."""
    if not has_request_context():
        return None
    facts = g.get(_KEY)
    return facts if facts is not None and facts.merchant_id == merchant_id else None
