"""A send batch's signed links are the very tokens the one-off functions make, and
they open the same pages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stampweb import links


@pytest.mark.parametrize("channel", links.UNSUBSCRIBE_CHANNELS)
@pytest.mark.parametrize("customer_id, merchant_id", [(1, 1), (42, 7), (987654321, 123456),
                                                      (11111111111111, 11111111111111)])
def test_bulk_links_are_the_same_tokens(app, monkeypatch, channel, customer_id, merchant_id):
    customer = SimpleNamespace(id=customer_id, merchant_id=merchant_id)
    # One clock for both: preference tokens carry the second they were made.
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: 1_760_000_000.5)
    with app.app_context():
        bulk = links.BulkLinks(channel)
        assert bulk.unsubscribe_url(customer) == links.unsubscribe_url(customer, channel)
        assert bulk.prefs_url(customer) == links.prefs_url(customer)
        card = SimpleNamespace(token=f"card-token-{customer_id}")
        assert bulk.card_url(card) == links.card_url(card)
        token = bulk.unsubscribe_url(customer).rsplit("/", 1)[1]
        assert links.verify_unsubscribe_token(token) == links.LinkTarget(
            customer_id, merchant_id, channel)


def test_bulk_links_sign_with_the_newest_key(app):
    app.config["SECRET_KEY_FALLBACKS"] = ["an-old-key"]
    customer = SimpleNamespace(id=5, merchant_id=6)
    with app.app_context():
        token = links.BulkLinks().prefs_url(customer).rsplit("/", 1)[1]
        assert links.verify_prefs_token(token) == links.LinkTarget(5, 6)
        app.config["SECRET_KEY_FALLBACKS"] = []
        assert links.verify_prefs_token(token) == links.LinkTarget(5, 6)


def test_bulk_links_sign_as_itsdangerous_does_with_its_own_hmac(app):
    """The one-shot HMAC-SHA1 gives the very signature of itsdangerous's default
    algorithm, for any key and value."""
    from itsdangerous.signer import HMACAlgorithm

    ours, theirs = links._OneShotHmacSha1(), HMACAlgorithm()
    for key, value in [(b"k", b""), (b"a" * 100, b"[1,2]"), (bytes(range(64)), b"x" * 500)]:
        assert ours.get_signature(key, value) == theirs.get_signature(key, value)
