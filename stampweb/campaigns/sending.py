"""Campaign lifecycle and the send pipeline (DESIGN.md "Sending").

start → fan-out (pages the audience by key into the outbox, checkpointing
its cursor in the same transaction) → send batches of a few hundred rows, each
over one SMTP connection → finished when no row is pending or sending.

Exactly-once, as near as SMTP allows: each row is committed `sent` right
after its DATA transaction, before the next message starts, so a worker
killed at the worst moment leaves at most the one in-flight message per
connection ambiguous; the reconciler turns that row `unknown` when its lease
expires and never sends it again.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from flask import current_app, render_template
from flask_babel import force_locale
from sqlalchemy import select

from .. import links
from ..database import begin_write
from ..extensions import db
from ..messaging import eligibility, transport
from ..models import Card, Customer, Merchant, Program, utcnow
from ..models.campaigns import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DRAFT,
    CAMPAIGN_PAUSED,
    CAMPAIGN_SCHEDULED,
    CAMPAIGN_SENDING,
    CAMPAIGN_SENT,
    MSG_PENDING,
    MSG_SENDING,
    MSG_SKIPPED,
    SKIP_CANCELLED,
    SKIP_NO_DEVICE,
    SKIP_WALLET_NOT_CONFIGURED,
    Campaign,
    Message,
)
from . import audiences, outbox, rendering

# Reminders about the customer's own card honour the separate "reminders"
# opt-in instead of marketing consent.
REMINDER_KINDS = frozenset({"reward_ready", "voucher_expiry", "tag_notify"})

SEND_BATCH_SIZE = 300
STATUS_CHECK_SECONDS = 1.0
FANOUT_BATCH_SIZE = 1000
# Auto-pause when a batch goes this badly (listmonk's error-threshold idea).
ERROR_BURST_MIN = 10
ERROR_BURST_RATIO = 0.5


class CampaignStateError(ValueError):
    """The campaign can't make that move from the state it is in."""


def _load_campaign(campaign_id: int, lock: bool = False) -> Campaign:
    query = select(Campaign).where(Campaign.id == campaign_id)
    if lock:
        query = query.with_for_update()
    campaign = db.session.scalar(query)
    if campaign is None:
        raise LookupError(f"campaign {campaign_id} not found")
    return campaign


def _change_state(campaign_id: int, allowed: tuple[str, ...], new: str, **fields) -> Campaign:
    begin_write()
    campaign = _load_campaign(campaign_id, lock=True)
    if campaign.status not in allowed:
        db.session.rollback()
        raise CampaignStateError(f"a {campaign.status} campaign cannot become {new}")
    campaign.status = new
    for name, value in fields.items():
        setattr(campaign, name, value)
    db.session.commit()
    return campaign


def start(campaign_id: int, now: datetime | None = None) -> Campaign:
    """Begin sending now: the fan-out job materialises the audience."""
    campaign = _change_state(
        campaign_id, (CAMPAIGN_DRAFT, CAMPAIGN_SCHEDULED), CAMPAIGN_SENDING,
        started_at=now or utcnow(), paused_reason=None,
    )
    _enqueue_fanout(campaign)
    return campaign


def schedule(campaign_id: int, when_utc: datetime) -> Campaign:
    return _change_state(
        campaign_id, (CAMPAIGN_DRAFT, CAMPAIGN_SCHEDULED), CAMPAIGN_SCHEDULED,
        scheduled_at=when_utc,
    )


def pause(campaign_id: int, reason: str | None = None) -> Campaign:
    return _change_state(campaign_id, (CAMPAIGN_SENDING,), CAMPAIGN_PAUSED, paused_reason=reason)


def resume(campaign_id: int) -> Campaign:
    campaign = _change_state(campaign_id, (CAMPAIGN_PAUSED,), CAMPAIGN_SENDING,
                             paused_reason=None)
    if not campaign.fanout_done:
        _enqueue_fanout(campaign)
    enqueue_due(campaign.id, stale_after=timedelta(0))
    return campaign


def cancel(campaign_id: int) -> Campaign:
    """Stop for good: rows not yet sent are skipped as cancelled."""
    campaign = _change_state(
        campaign_id, (CAMPAIGN_DRAFT, CAMPAIGN_SCHEDULED, CAMPAIGN_SENDING, CAMPAIGN_PAUSED),
        CAMPAIGN_CANCELLED, finished_at=utcnow(),
    )
    begin_write()
    pending = db.session.scalars(
        select(Message).where(Message.campaign_id == campaign_id,
                              Message.status == MSG_PENDING)
    ).all()
    for message in pending:
        message.status = MSG_SKIPPED
        message.skip_reason = SKIP_CANCELLED
        outbox.log_event(message, MSG_SKIPPED, SKIP_CANCELLED)
    db.session.commit()
    return campaign


def _enqueue_fanout(campaign: Campaign) -> None:
    from ..tasks.campaigns import fanout_job
    from ..tasks.queues import BULK, enqueue

    enqueue(BULK, fanout_job, campaign.merchant_id, campaign.id,
            job_id=f"fanout-{campaign.id}-{int(utcnow().timestamp())}")


def fanout(campaign_id: int, batch_size: int = FANOUT_BATCH_SIZE) -> int:
    """Materialise the audience page by page; return how many rows it added.

    Each page's rows and the cursor move in one transaction, so a fan-out
    killed halfway resumes after the last committed page and the unique key
    absorbs any overlap.
    """
    added = 0
    while True:
        begin_write()
        campaign = _load_campaign(campaign_id, lock=True)
        if campaign.status != CAMPAIGN_SENDING or campaign.fanout_done:
            db.session.commit()
            return added
        ids = audiences.page(campaign.merchant_id, campaign.audience,
                             after_id=campaign.fanout_cursor, limit=batch_size)
        if not ids:
            campaign.fanout_done = True
            db.session.commit()
            finish_if_done(campaign_id)
            return added
        added += outbox.materialise(campaign.merchant_id, campaign.id, ids,
                                    campaign.channel_list)
        campaign.fanout_cursor = ids[-1]
        db.session.commit()
        # Only rows no job holds yet: the page just added (a zero window here
        # re-enqueued every pending row on every page, quadratically).
        enqueue_due(campaign_id, stale_after=_stale_window())


def _stale_window() -> timedelta:
    """How long a queued row may wait for its job before it counts as lost."""
    return timedelta(seconds=current_app.config.get("RECONCILE_STALE_SECONDS", 120))


def enqueue_due(campaign_id: int, stale_after: timedelta, now: datetime | None = None) -> int:
    """Enqueue send jobs for due rows that no live job holds; return the row count."""
    from ..tasks.campaigns import send_batch_job
    from ..tasks.queues import BULK, enqueue

    now = now or utcnow()
    merchant_id = db.session.scalar(select(Campaign.merchant_id).where(Campaign.id == campaign_id))
    total = 0
    while True:
        ids = outbox.due_unqueued(campaign_id, stale_after, SEND_BATCH_SIZE, now)
        if not ids:
            return total
        outbox.mark_queued(ids, now)
        db.session.commit()
        enqueue(BULK, send_batch_job, merchant_id, campaign_id, ids, job_timeout=900)
        total += len(ids)


def finish_if_done(campaign_id: int) -> bool:
    """Mark a one-off campaign sent once nothing is left open.

    Automation campaigns stay `sending` while their flow is switched on: an
    empty outbox only means nobody is due today.
    """
    begin_write()
    campaign = _load_campaign(campaign_id, lock=True)
    if (campaign.status != CAMPAIGN_SENDING or not campaign.fanout_done
            or campaign.kind != "oneoff"):
        db.session.commit()
        return False
    open_rows = db.session.scalar(
        select(Message.id).where(Message.campaign_id == campaign_id,
                                 Message.status.in_((MSG_PENDING, MSG_SENDING))).limit(1)
    )
    if open_rows is None:
        campaign.status = CAMPAIGN_SENT
        campaign.finished_at = utcnow()
    db.session.commit()
    return open_rows is None


class _Recipient:
    """What a message needs about its customer, loaded once per row."""

    def __init__(self, customer: Customer | None):
        self.customer = customer
        self.card = (
            db.session.scalar(select(Card).where(Card.customer_id == customer.id))
            if customer is not None else None
        )


def send_batch(campaign_id: int, message_ids: list[int]) -> dict[str, int]:
    """Send the due rows among `message_ids`; return what happened to them."""
    outcome = {"sent": 0, "skipped": 0, "failed": 0, "retry": 0, "unknown": 0, "deferred": 0}
    # Each message commits its result before the next one goes out. Expiring
    # every loaded object at each of those commits made the batch reload the
    # same rows thousands of times (half the worker's CPU, bench/campaign.py).
    # What must be fresh is read fresh: the customer per message, and the
    # campaign's status by a direct query.
    db.session().expire_on_commit = False
    claimed = outbox.claim(message_ids)
    if not claimed:
        return outcome
    campaign = _load_campaign(campaign_id)
    merchant = db.session.get(Merchant, campaign.merchant_id)
    program = db.session.scalar(select(Program).where(Program.merchant_id == merchant.id))
    email_rows = [m for m in claimed if m.channel == "email"]
    wallet_rows = [m for m in claimed if m.channel == "wallet"]
    compiled: dict[str, rendering.CompiledContent] = {}
    if email_rows:
        _send_emails(campaign, merchant, program, email_rows, compiled, outcome)
    for message in wallet_rows:
        _send_wallet(campaign, merchant, program, message, compiled, outcome)
    _auto_pause_on_error_burst(campaign_id, outcome)
    finish_if_done(campaign_id)
    return outcome


def _content_for(campaign, merchant, customer, compiled) -> rendering.CompiledContent:
    locale = customer.locale if customer is not None and customer.locale else merchant.locale
    if locale not in compiled:
        compiled[locale] = rendering.compile_content(campaign, locale)
    return compiled[locale]


def _fresh_customer(customer_id: int | None) -> Customer | None:
    """The customer as the database has it now: consent may have changed a second ago."""
    if customer_id is None:
        return None
    return db.session.get(Customer, customer_id, populate_existing=True)


def _still_sending(campaign_id: int) -> bool:
    return db.session.scalar(select(Campaign.status).where(Campaign.id == campaign_id)) == (
        CAMPAIGN_SENDING
    )


def _send_emails(campaign, merchant, program, rows, compiled, outcome) -> None:
    now = utcnow()
    remaining = list(rows)
    checked_at = 0.0
    with transport.open_connection() as connection:
        while remaining:
            message = remaining.pop(0)
            # Pause and cancel take effect within a second, without a query per message.
            if time.monotonic() - checked_at >= STATUS_CHECK_SECONDS:
                checked_at = time.monotonic()
                if not _still_sending(campaign.id):
                    outbox.release([message, *remaining], "campaign paused or cancelled")
                    return
            recipient = _Recipient(_fresh_customer(message.customer_id))
            reason = eligibility.skip_reason(
                recipient.customer, "email", merchant, now, exclude_message_id=message.id,
                consent_channel="reminders" if campaign.kind in REMINDER_KINDS else None,
            )
            if reason:
                outbox.mark_skipped(message, reason)
                outcome["skipped"] += 1
                continue
            email = _build_email(campaign, merchant, program, message, recipient, compiled)
            # No transaction stays open across the network round trip.
            db.session.commit()
            try:
                connection.send(email)
            except transport.PermanentFailure as exc:
                outbox.mark_failed(message, f"{exc.code or ''} {exc}".strip())
                _suppress_email(recipient.customer.id)
                outcome["failed"] += 1
            except transport.TemporaryFailure as exc:
                if exc.maybe_sent:
                    outbox.mark_unknown(message, str(exc))
                    outcome["unknown"] += 1
                else:
                    outbox.retry_later(message, f"{exc.code or ''} {exc}".strip())
                    outcome["retry"] += 1
                if exc.code is None:
                    # The connection itself broke: give the rest back for a later job.
                    outbox.release(remaining, "connection lost; released for a later batch")
                    return
            else:
                outbox.mark_sent(message)
                outcome["sent"] += 1


def _suppress_email(customer_id: int) -> None:
    """A hard bounce: this address gets no more email from us."""
    begin_write()
    customer = db.session.get(Customer, customer_id)
    if customer.email_suppressed_at is None:
        customer.email_suppressed_at = utcnow()
    db.session.commit()


def _issue_voucher(campaign, message, recipient) -> str | None:
    """The campaign's voucher for this row, issued once (a retry reuses it)."""
    if not campaign.voucher_title or recipient.customer is None:
        return None
    from ..loyalty import vouchers
    from ..models import Voucher

    if message.voucher_id is None:
        begin_write()
        voucher = vouchers.issue(
            campaign.merchant_id, recipient.customer.id, kind="campaign",
            title=campaign.voucher_title, valid_days=campaign.voucher_valid_days,
            card_id=recipient.card.id if recipient.card else None,
            origin={"campaign_id": campaign.id, "message_id": message.id},
        )
        message.voucher_id = voucher.id
        db.session.commit()
        return voucher.code
    return db.session.scalar(select(Voucher.code).where(Voucher.id == message.voucher_id))


def _build_email(campaign, merchant, program, message, recipient, compiled):
    customer = recipient.customer
    content = _content_for(campaign, merchant, customer, compiled)
    voucher_code = _issue_voucher(campaign, message, recipient)
    card_url = links.card_url(recipient.card) if recipient.card else links.absolute("/")
    values = rendering.recipient_values(customer, recipient.card, program,
                                        voucher_code=voucher_code, card_url=card_url)
    # Reminders about the customer's own card stop with their own opt-out,
    # and explain what is missing from the profile.
    reminder = campaign.kind in REMINDER_KINDS
    unsubscribe = links.unsubscribe_url(customer, "reminders" if reminder else "all")
    template = "email/reminder_campaign" if reminder else "email/campaign"
    with force_locale(content.locale):
        html = render_template(
            f"{template}.html", merchant=merchant, content=content, kind=campaign.kind,
            body=rendering.personalise(content.html_body, values, html=True),
            preheader=rendering.personalise(content.preheader, values),
            prefs_url=links.prefs_url(customer), unsubscribe_url=unsubscribe,
            customer=customer,
        )
        text = render_template(
            f"{template}.txt", merchant=merchant, customer=customer, kind=campaign.kind,
            body=rendering.personalise(content.text_body, values),
            prefs_url=links.prefs_url(customer), unsubscribe_url=unsubscribe,
        )
    host = links.absolute("/").split("://", 1)[-1].strip("/").split("/")[0].split(":")[0]
    to_address = customer.email
    db.session.commit()
    begin_write()
    message.email_message_id = transport.new_message_id(f"m{message.id}.c{campaign.id}")
    message.to_address = to_address
    message.in_flight_since = utcnow()
    db.session.commit()
    headers = {
        "List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@{host}?subject="
                            f"unsubscribe-{message.id}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{rendering.single_line(merchant.name)} <{merchant.slug}.{host}>",
        "Precedence": "bulk",
    }
    return transport.build_message(
        merchant=merchant, to=to_address,
        subject=rendering.single_line(rendering.personalise(content.subject, values)),
        text=text, html=html, headers=headers, message_id=message.email_message_id,
    )


def _send_wallet(campaign, merchant, program, message, compiled, outcome) -> None:
    now = utcnow()
    customer = _fresh_customer(message.customer_id)
    reason = eligibility.skip_reason(
        customer, "wallet", merchant, now, exclude_message_id=message.id,
        consent_channel="reminders" if campaign.kind in REMINDER_KINDS else None,
    )
    if reason:
        outbox.mark_skipped(message, reason)
        outcome["skipped"] += 1
        return
    later = eligibility.quiet_until(merchant, now)
    if later is not None:
        outbox.defer(message, later, "quiet hours: waits until morning")
        outcome["deferred"] += 1
        return
    recipient = _Recipient(customer)
    content = _content_for(campaign, merchant, customer, compiled)
    card_url = links.card_url(recipient.card) if recipient.card else ""
    values = rendering.recipient_values(customer, recipient.card, program,
                                        voucher_code=_issue_voucher(campaign, message, recipient),
                                        card_url=card_url)
    text = rendering.single_line(rendering.personalise(content.wallet_text, values))
    result = _wallet_sender()(merchant.id, recipient.card.id if recipient.card else None, text)
    if result.get("status") == "sent":
        outbox.mark_sent(message, detail=result.get("detail"))
        outcome["sent"] += 1
    elif result.get("status") == "skipped":
        outbox.mark_skipped(message, result.get("reason") or SKIP_WALLET_NOT_CONFIGURED)
        outcome["skipped"] += 1
    else:
        outbox.retry_later(message, result.get("detail") or "wallet update failed")
        outcome["retry"] += 1


def _wallet_sender():
    """The wallet channel as {status, reason, detail}: sent, skipped (and why) or retry."""
    from ..wallet import updates

    def send(merchant_id, card_id, text):
        if card_id is None:
            return {"status": "skipped", "reason": SKIP_NO_DEVICE}
        result = updates.send_wallet_message(merchant_id, card_id, text)
        if result.status == updates.STATUS_SENT:
            return {"status": "sent", "detail": result.description}
        if result.status == updates.STATUS_NOT_CONFIGURED:
            return {"status": "skipped", "reason": SKIP_WALLET_NOT_CONFIGURED}
        if result.status == updates.STATUS_NO_PASS:
            return {"status": "skipped", "reason": SKIP_NO_DEVICE}
        return {"status": "retry", "detail": result.description}

    return send


def _auto_pause_on_error_burst(campaign_id: int, outcome: dict[str, int]) -> None:
    errors = outcome["failed"] + outcome["retry"] + outcome["unknown"]
    tried = errors + outcome["sent"]
    if errors >= ERROR_BURST_MIN and errors >= ERROR_BURST_RATIO * tried:
        reason = (f"Paused automatically: {errors} of {tried} messages in one batch failed. "
                  "Check the mail server, then resume.")
        try:
            pause(campaign_id, reason)
        except CampaignStateError:
            pass
        current_app.logger.warning("campaign %s auto-paused: %s", campaign_id, reason)


def reconcile(now: datetime | None = None, stale_after: timedelta | None = None) -> dict:
    """Repair what a crash or a Redis restart left behind. Safe to run any time.

    - rows `sending` past their lease become `unknown`;
    - scheduled campaigns whose time came are started;
    - sending campaigns get their fan-out restarted if it stopped, and due
      pending rows with no live job are enqueued again (claims are atomic,
      so a duplicate job finds nothing to do);
    - campaigns with nothing left open are marked sent.
    """
    now = now or utcnow()
    if stale_after is None:
        stale_after = _stale_window()
    report = {**outbox.expire_leases(now), "started": 0, "requeued": 0}
    due = db.session.scalars(
        select(Campaign.id).where(Campaign.status == CAMPAIGN_SCHEDULED,
                                  Campaign.scheduled_at <= now)
    ).all()
    for campaign_id in due:
        try:
            start(campaign_id, now)
            report["started"] += 1
        except CampaignStateError:
            pass
    sending = db.session.scalars(
        select(Campaign).where(Campaign.status == CAMPAIGN_SENDING)
    ).all()
    for campaign in sending:
        if not campaign.fanout_done and (
            campaign.updated_at is None or campaign.updated_at < now - stale_after
        ):
            _enqueue_fanout(campaign)
        report["requeued"] += enqueue_due(campaign.id, stale_after, now)
        finish_if_done(campaign.id)
    return report
