"""Domain events: services announce what happened; wallet updates and webhooks listen.

Services send these after their transaction commits, with plain ids, so a
receiver can enqueue a job without touching the sender's session. Keeping the
senders ignorant of the receivers lets the wallet and the integration API grow
without every stamping or join path knowing about them.

    from stampweb import events
    events.card_changed.send(merchant_id=1, card_id=7)
"""

from blinker import Namespace

_signals = Namespace()

# A card's balance, reward state or message changed: wallet passes must update.
card_changed = _signals.signal("card-changed")          # merchant_id, card_id
customer_joined = _signals.signal("customer-joined")    # merchant_id, customer_id
visit_recorded = _signals.signal("visit-recorded")      # merchant_id, visit_id
reward_issued = _signals.signal("reward-issued")        # merchant_id, voucher_id
voucher_redeemed = _signals.signal("voucher-redeemed")  # merchant_id, voucher_id
customer_unsubscribed = _signals.signal("customer-unsubscribed")  # merchant_id, customer_id


def send(signal, **payload) -> None:
    """Send with the payload as keyword arguments and no sender object."""
    signal.send(None, **payload)
