"""Keeping wallet cards current: every change reaches Apple and Google passes.

Flow: a service commits a change and sends `events.card_changed`; the
receiver here marks the card pending in Redis (`SET NX`) and, only if it was
not pending yet, enqueues one update job a few seconds later. A burst of
stamps, a reward and a voucher therefore give one job, hence one push per
device. The job clears the mark *before* reading the card, so a change
committed while it runs schedules the next job instead of being lost.

The job moves the pass's modification time, pushes once per Apple device
and PATCHes the Google object. Campaign text goes through
`send_wallet_message`, which the campaign sender calls per customer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from flask import Flask, current_app
from flask_babel import gettext as _
from sqlalchemy import func, select

from .. import events
from ..database import begin_write
from ..extensions import db, redis_client
from ..models import (
    Card,
    Merchant,
    WalletGoogleNotification,
    WalletPass,
    WalletRegistration,
    utcnow,
)
from ..tenancy import tenant
from . import apns, google, google_pass, passkit
from .credentials import AppleConfig, GoogleConfig, could_be_ready, wallet_status

log = logging.getLogger(__name__)

PENDING_KEY = "stampweb:wallet:pending:{card_id}"
# The pending mark outlives a busy queue; if a job is lost it still expires.
PENDING_TTL = 600
DEFAULT_COALESCE_SECONDS = 3
GOOGLE_NOTIFY_LIMIT = 3
GOOGLE_NOTIFY_WINDOW = timedelta(hours=24)
APNS_RETRY_DELAYS = (30, 120, 600)

# Results of send_wallet_message, per channel.
NOT_CONFIGURED = "not_configured"
PUSHED = "pushed"
NO_DEVICES = "no_devices"
RETRY_LATER = "retry_later"
NOTIFIED = "notified"
TEXT_ONLY_QUOTA = "text_only_quota"
NOT_SAVED = "not_saved"
FAILED = "failed"

# Overall status of send_wallet_message.
STATUS_SENT = "sent"
STATUS_NOT_CONFIGURED = "wallet_not_configured"
STATUS_NO_PASS = "no_wallet_pass"
STATUS_FAILED = "failed"


# --- wiring ---------------------------------------------------------------------------


def init_wallet(app: Flask) -> None:
    """Listen for card changes and give templates `wallet_buttons(merchant_id)`."""
    app.extensions["stampweb_wallet"] = True
    # One module-level receiver: connecting it again (another app) is a no-op.
    events.card_changed.connect(_on_card_changed, weak=False)
    app.jinja_env.globals["wallet_buttons"] = wallet_availability


def _on_card_changed(_sender, *, merchant_id: int, card_id: int, **_payload) -> None:
    if not current_app or not current_app.extensions.get("stampweb_wallet"):
        return
    try:
        schedule_card_update(merchant_id, card_id)
    except Exception:  # noqa: BLE001 - a wallet hiccup must never fail a stamp
        log.exception("could not schedule the wallet update of card %s", card_id)


def wallet_availability(merchant_id: int) -> dict[str, bool]:
    """Which add-to-wallet buttons the card page may show."""
    status = wallet_status(merchant_id)
    return {"apple": status.apple_ready, "google": status.google_ready}


def schedule_card_update(merchant_id: int, card_id: int) -> bool:
    """Enqueue one wallet update for the card unless one is already pending."""
    if not could_be_ready(merchant_id):
        return False
    status = wallet_status(merchant_id)
    if not (status.apple_ready or status.google_ready):
        return False
    key = PENDING_KEY.format(card_id=card_id)
    if not redis_client().set(key, "1", nx=True, ex=PENDING_TTL):
        return False
    from ..tasks.wallet import enqueue_card_update

    delay = current_app.config.get("WALLET_COALESCE_SECONDS", DEFAULT_COALESCE_SECONDS)
    try:
        enqueue_card_update(merchant_id, card_id, delay=delay)
    except Exception:
        redis_client().delete(key)
        raise
    return True


# --- the update job's service ---------------------------------------------------------


@dataclass
class CardUpdateReport:
    apple_configured: bool = False
    google_configured: bool = False
    pushed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    retry_later: list[str] = field(default_factory=list)
    google_updated: bool = False


def update_card(merchant_id: int, card_id: int) -> CardUpdateReport:
    """Move the card's pass on, push its Apple devices once, PATCH its Google object."""
    redis_client().delete(PENDING_KEY.format(card_id=card_id))
    report = CardUpdateReport()
    with tenant(merchant_id):
        status = wallet_status(merchant_id)
        report.apple_configured = status.apple_ready
        report.google_configured = status.google_ready
        card = db.session.get(Card, card_id)
        if card is None or not (status.apple_ready or status.google_ready):
            return report
        row = passkit.wallet_pass_for(card)
        passkit.mark_modified(row)
        db.session.commit()
        if status.apple_config is not None:
            _push_apple(merchant_id, card_id, status.apple_config, report)
        if status.google_config is not None and row.google_object_id:
            try:
                report.google_updated = sync_google_object(merchant_id, card_id,
                                                           status.google_config)
            except google.GoogleWalletError as exc:
                if not exc.retryable:
                    raise
                log.warning("Google Wallet busy, retrying later: %s", exc)
                from ..tasks.wallet import enqueue_google_sync

                enqueue_google_sync(merchant_id, card_id)
    return report


def _push_apple(merchant_id: int, card_id: int, config: AppleConfig,
                report: CardUpdateReport, tokens: list[str] | None = None,
                attempt: int = 0) -> None:
    if tokens is None:
        tokens = [t for t, ptid in _tokens_with_type(card_id) if ptid == config.pass_type_id]
    if not tokens:
        return
    result = apns.client_for(config).push_many(tokens)
    report.pushed += result.delivered
    report.retry_later += result.retry_later
    for token in result.gone:
        passkit.forget_push_token(merchant_id, token)
        report.removed.append(token)
    if result.retry_later:
        if attempt < len(APNS_RETRY_DELAYS):
            from ..tasks.wallet import enqueue_apns_retry

            enqueue_apns_retry(merchant_id, card_id, result.retry_later, attempt + 1,
                               delay=APNS_RETRY_DELAYS[attempt])
        else:
            log.error("APNs push for card %s gave up after %s attempts", card_id, attempt)


def _tokens_with_type(card_id: int) -> list[tuple[str, str]]:
    rows = db.session.execute(
        select(WalletRegistration.push_token, WalletRegistration.pass_type_id)
        .where(WalletRegistration.card_id == card_id)
    ).all()
    return sorted({(token, pass_type_id) for token, pass_type_id in rows})


def retry_push(merchant_id: int, card_id: int, tokens: list[str], attempt: int) -> None:
    """Push again to devices APNs was too busy for (429, 5xx, connection trouble)."""
    with tenant(merchant_id):
        config = wallet_status(merchant_id).apple_config
        if config is None:
            return
        current = {t for t, _ptid in _tokens_with_type(card_id)}
        tokens = [t for t in tokens if t in current]
        _push_apple(merchant_id, card_id, config, CardUpdateReport(), tokens, attempt)


def sync_google_object(merchant_id: int, card_id: int,
                       config: GoogleConfig | None = None) -> bool:
    """PATCH the card's Google object with its current balance and state."""
    with tenant(merchant_id):
        config = config or wallet_status(merchant_id).google_config
        if config is None:
            return False
        card = db.session.get(Card, card_id)
        merchant = db.session.get(Merchant, merchant_id)
        row = passkit.wallet_pass_for(card)
        body = google_pass.loyalty_object(config, card, merchant, row)
        db.session.commit()
        exists = google.patch_object(config, body)
        if not exists:
            google.insert_or_update_object(config, body)
        row.google_object_id = body["id"]
        row.google_synced_at = utcnow()
        db.session.commit()
        return True


def google_save_url(merchant_id: int, card_id: int) -> str:
    """Make sure the class and the card's object exist at Google, then sign the save link.

    Google's "skinny" JWT names only the object id; the object must exist first.
    """
    with tenant(merchant_id):
        config = wallet_status(merchant_id).google_config
        if config is None:
            raise passkit.WalletNotConfigured("Google Wallet is not configured")
        card = db.session.get(Card, card_id)
        merchant = db.session.get(Merchant, merchant_id)
        google.insert_or_update_class(config, google_pass.loyalty_class(config, merchant,
                                                                         card.program))
        row = passkit.wallet_pass_for(card)
        body = google_pass.loyalty_object(config, card, merchant, row)
        google.insert_or_update_object(config, body)
        row.google_object_id = body["id"]
        row.google_synced_at = utcnow()
        db.session.commit()
        return google.save_link(config, body["id"], [current_app.config["BASE_URL"]])


# --- campaign messages -----------------------------------------------------------------


@dataclass
class WalletMessageResult:
    """What happened to one wallet message, per channel, for the message log."""

    apple: str = NOT_CONFIGURED
    google: str = NOT_CONFIGURED
    devices: int = 0
    error: str | None = None

    @property
    def status(self) -> str:
        if self.apple == NOT_CONFIGURED and self.google == NOT_CONFIGURED:
            return STATUS_NOT_CONFIGURED
        if self.apple in (PUSHED, RETRY_LATER) or self.google in (NOTIFIED, TEXT_ONLY_QUOTA):
            return STATUS_SENT
        if FAILED in (self.apple, self.google):
            return STATUS_FAILED
        return STATUS_NO_PASS

    @property
    def sent(self) -> bool:
        return self.status == STATUS_SENT

    @property
    def description(self) -> str:
        """One line for the message log."""
        if self.status == STATUS_NOT_CONFIGURED:
            return _("Wallet not configured")
        parts = []
        apple_text = {
            PUSHED: _("Apple Wallet: pushed to %(count)d device(s)", count=self.devices),
            NO_DEVICES: _("Apple Wallet: no device holds this card"),
            RETRY_LATER: _("Apple Wallet: APNs busy, retrying"),
            FAILED: _("Apple Wallet: failed"),
        }
        google_text = {
            NOTIFIED: _("Google Wallet: notified"),
            TEXT_ONLY_QUOTA: _("Google Wallet: shown without a notification "
                               "(3 notifications per 24 hours reached)"),
            NOT_SAVED: _("Google Wallet: card not saved"),
            FAILED: _("Google Wallet: failed"),
        }
        if self.apple in apple_text:
            parts.append(apple_text[self.apple])
        if self.google in google_text:
            parts.append(google_text[self.google])
        if self.error:
            parts.append(self.error)
        return "; ".join(parts)


def send_wallet_message(merchant_id: int, card_id: int, text: str) -> WalletMessageResult:
    """Show `text` on the card's wallet passes and notify their holders.

    Apple: the pass's "Latest news" back field becomes `text` (its
    changeMessage puts it on the lock screen) and every device gets a push.
    Google: addMessage with TEXT_AND_NOTIFY, or plain TEXT once the card had
    three notifications in 24 hours (result `text_only_quota`).
    """
    result = WalletMessageResult()
    with tenant(merchant_id):
        status = wallet_status(merchant_id)
        if not (status.apple_ready or status.google_ready):
            return result
        card = db.session.get(Card, card_id)
        if card is None:
            raise LookupError(f"no card {card_id} for merchant {merchant_id}")
        row = passkit.wallet_pass_for(card)
        row.message = text
        row.message_at = utcnow()
        passkit.mark_modified(row)
        db.session.commit()
        google_object = row.google_object_id

        if status.apple_config is not None:
            report = CardUpdateReport()
            try:
                _push_apple(merchant_id, card_id, status.apple_config, report)
            except Exception as exc:  # noqa: BLE001 - recorded in the result
                log.exception("APNs push for card %s failed", card_id)
                result.apple, result.error = FAILED, str(exc)
            else:
                result.devices = len(report.pushed)
                if report.pushed:
                    result.apple = PUSHED
                elif report.retry_later:
                    result.apple = RETRY_LATER
                else:
                    result.apple = NO_DEVICES

        if status.google_config is not None:
            if not google_object:
                result.google = NOT_SAVED
            else:
                result.google = _google_message(merchant_id, card_id, google_object,
                                                status.google_config, text, result)
    return result


def _google_message(merchant_id: int, card_id: int, object_id: str, config: GoogleConfig,
                    text: str, result: WalletMessageResult) -> str:
    merchant = db.session.get(Merchant, merchant_id)
    notify = reserve_google_notification(merchant_id, card_id, object_id)
    try:
        try:
            google.add_message(config, object_id, merchant.name, text, notify=notify is not None)
        except google.GoogleWalletError as exc:
            if notify is None or not exc.quota_exceeded:
                raise
            # Google counted differently (another system, clock skew): fall back to TEXT.
            _release(notify)
            notify = None
            google.add_message(config, object_id, merchant.name, text, notify=False)
    except google.GoogleWalletError as exc:
        if notify is not None:
            _release(notify)
        log.warning("Google Wallet message for card %s failed: %s", card_id, exc)
        result.error = str(exc)
        return FAILED
    return NOTIFIED if notify is not None else TEXT_ONLY_QUOTA


def google_notifications_left(card_id: int, now=None) -> int:
    now = now or utcnow()
    used = db.session.scalar(
        select(func.count(WalletGoogleNotification.id)).where(
            WalletGoogleNotification.card_id == card_id,
            WalletGoogleNotification.sent_at > now - GOOGLE_NOTIFY_WINDOW,
        )
    )
    return max(GOOGLE_NOTIFY_LIMIT - used, 0)


def reserve_google_notification(merchant_id: int, card_id: int,
                                object_id: str) -> int | None:
    """Claim one of the card's three notifications per 24 h, or None when used up.

    The claim is written before Google is called, under the card's pass row
    lock, so two senders at once cannot both take the third one.
    """
    with tenant(merchant_id):
        begin_write()
        db.session.scalar(
            select(WalletPass).where(WalletPass.card_id == card_id).with_for_update()
        )
        if google_notifications_left(card_id) <= 0:
            db.session.commit()
            return None
        claim = WalletGoogleNotification(merchant_id=merchant_id, card_id=card_id,
                                         object_id=object_id, sent_at=utcnow())
        db.session.add(claim)
        db.session.commit()
        return claim.id


def _release(claim_id: int) -> None:
    claim = db.session.get(WalletGoogleNotification, claim_id)
    if claim is not None:
        db.session.delete(claim)
        db.session.commit()
