"""Campaign lifecycle and the send pipeline (DESIGN.md "Sending").

start → fan-out (pages the audience by key into the outbox, checkpointing
its cursor in the same transaction) → send batches of a few hundred rows, each
over one SMTP connection → finished when no row is pending or sending.

Exactly-once, as near as SMTP allows: each row is committed in flight
before its DATA transaction and `sent` after it, in the same statement that
puts the next message in flight (outbox.Recorder.note_sent), so a worker
killed at the worst moment leaves at most the one in-flight message per
connection ambiguous; the reconciler turns that row `unknown` when its lease
expires and never sends it again.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta

from flask import current_app, render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from markupsafe import escape
from sqlalchemy import select

from .. import links
from ..database import among, begin_write
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

# Rows per send job: a few hundred (DESIGN.md), so a job ends within a few
# seconds, well inside the lease and the job timeout, and a lost job or a
# pause leaves little in between. Each job forks a work-horse that opens its
# connections and compiles its statements afresh (~0.15 s of CPU,
# bench/send_batch_profile.py), 0.3 ms a message at this size.
SEND_BATCH_SIZE = 500
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
        # The new rows are marked queued in their INSERT and enqueued right
        # after the commit. Killed in between, they wait for the reconciler,
        # which re-enqueues rows queued longer ago than the stale window.
        now = utcnow()
        new_ids = outbox.materialise_ids(campaign.merchant_id, campaign.id, ids,
                                         campaign.channel_list, queued_at=now)
        added += len(new_ids)
        campaign.fanout_cursor = ids[-1]
        merchant_id = campaign.merchant_id
        db.session.commit()
        _enqueue_batches(merchant_id, campaign_id, new_ids)


def _stale_window() -> timedelta:
    """How long a queued row may wait for its job before it counts as lost."""
    return timedelta(seconds=current_app.config.get("RECONCILE_STALE_SECONDS", 120))


def enqueue_due(campaign_id: int, stale_after: timedelta, now: datetime | None = None) -> int:
    """Enqueue send jobs for due rows that no live job holds; return the row count."""
    now = now or utcnow()
    merchant_id = db.session.scalar(select(Campaign.merchant_id).where(Campaign.id == campaign_id))
    total = 0
    while True:
        ids = outbox.due_unqueued(campaign_id, stale_after, SEND_BATCH_SIZE, now)
        if not ids:
            return total
        outbox.mark_queued(ids, now)
        db.session.commit()
        _enqueue_batches(merchant_id, campaign_id, ids)
        total += len(ids)


def _enqueue_batches(merchant_id: int, campaign_id: int, ids: list[int]) -> None:
    """Send jobs of SEND_BATCH_SIZE rows for `ids` (committed as queued already)."""
    from ..tasks.campaigns import send_batch_job
    from ..tasks.queues import BULK, enqueue

    for start in range(0, len(ids), SEND_BATCH_SIZE):
        enqueue(BULK, send_batch_job, merchant_id, campaign_id,
                ids[start:start + SEND_BATCH_SIZE],
                job_timeout=current_app.config["SEND_JOB_TIMEOUT"])


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


def send_batch(campaign_id: int, message_ids: list[int]) -> dict[str, int]:
    """Send the due rows among `message_ids`; return what happened to them."""
    outcome = {"sent": 0, "skipped": 0, "failed": 0, "retry": 0, "unknown": 0, "deferred": 0}
    session = db.session()
    expire_on_commit = session.expire_on_commit
    # Nothing the batch loaded (campaign, merchant, customers) needs reloading
    # after the commits it makes; what must be fresh is read fresh: consent in
    # the statement that marks a message in flight, the campaign's status by
    # a direct query.
    session.expire_on_commit = False
    try:
        claimed_any, handed_on = _send_claimed(campaign_id, message_ids, outcome)
    finally:
        session.expire_on_commit = expire_on_commit
    if not claimed_any:
        return outcome
    # The batch's messages, customers and cards went with _send_claimed's
    # frame (the session holds them weakly), so the commits below, which
    # expire what the session holds, do not walk three thousand objects.
    if handed_on:
        enqueue_due(campaign_id, _stale_window())
    _auto_pause_on_error_burst(campaign_id, outcome)
    finish_if_done(campaign_id)
    return outcome


def _send_claimed(campaign_id: int, message_ids: list[int],
                  outcome: dict[str, int]) -> tuple[bool, bool]:
    """Claim and send; (whether anything was claimed, whether rows were handed on)."""
    claimed = outbox.claim(message_ids)
    if not claimed:
        return False, False
    campaign = _load_campaign(campaign_id)
    merchant = db.session.get(Merchant, campaign.merchant_id)
    program = db.session.scalar(select(Program).where(Program.merchant_id == merchant.id))
    audience = _Audience([m.customer_id for m in claimed], merchant)
    email_rows = [m for m in claimed if m.channel == "email"]
    wallet_rows = [m for m in claimed if m.channel == "wallet"]
    handed_on = False
    with outbox.Recorder() as recorder:
        if email_rows:
            emails = _Emails(campaign, merchant, program)
            handed_on = _send_emails(emails, audience, recorder, email_rows, outcome)
        compiled: dict[str, rendering.CompiledContent] = {}
        for message in wallet_rows:
            _send_wallet(campaign, merchant, program, message, audience, recorder,
                         compiled, outcome)
    return True, handed_on


class _Audience:
    """The batch's customers and cards, loaded in two queries, and their recent sends.

    Consent is loaded here for rendering and re-checked at the moment of
    sending (outbox.Recorder.in_flight); the frequency-cap counts are taken
    once for the batch and kept current as it sends.
    """

    def __init__(self, customer_ids: list, merchant: Merchant):
        ids = sorted({cid for cid in customer_ids if cid is not None})
        self.customers: dict[int, Customer] = {
            c.id: c for c in db.session.scalars(
                select(Customer).where(among(Customer.id, ids))
                .execution_options(populate_existing=True))
        } if ids else {}
        self.cards: dict[int, Card] = {}
        if ids:
            for card in db.session.scalars(
                select(Card).where(among(Card.customer_id, ids)).order_by(Card.id)
            ):
                self.cards.setdefault(card.customer_id, card)
        self.recent = (eligibility.recent_counts(ids, utcnow())
                       if merchant.frequency_cap else {})
        db.session.commit()  # no transaction stays open while the batch sends

    def refresh(self, customer_id: int | None) -> Customer | None:
        """The customer as the database has it now: consent may have changed a second ago."""
        if customer_id is None:
            return None
        customer = db.session.get(Customer, customer_id, populate_existing=True)
        db.session.commit()
        if customer is None:
            self.customers.pop(customer_id, None)
        else:
            self.customers[customer_id] = customer
        return customer

    def skip_reason(self, customer, channel, merchant, now, consent_channel) -> str | None:
        return eligibility.skip_reason(
            customer, channel, merchant, now, consent_channel=consent_channel,
            recent_count=self.recent.get(customer.id, 0) if customer is not None else None,
        )

    def count_sent(self, customer_id: int | None) -> None:
        if customer_id is not None:
            self.recent[customer_id] = self.recent.get(customer_id, 0) + 1


def _content_for(campaign, merchant, customer, compiled) -> rendering.CompiledContent:
    locale = customer.locale if customer is not None and customer.locale else merchant.locale
    if locale not in compiled:
        compiled[locale] = rendering.compile_content(campaign, locale, merchant.locale)
    return compiled[locale]


def _still_sending(campaign_id: int) -> bool:
    status = db.session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
    db.session.commit()
    return status == CAMPAIGN_SENDING


class _Emails:
    """What every email of one campaign batch shares, prepared once.

    Content compiled once per language, the templates rendered once per
    language (rendering.TemplateShells), the sender and list headers folded
    once (transport.BulkComposer), the link signers made once (links.BulkLinks),
    the consent rule as SQL. Per message there remains: placeholders, two
    signed links, string joins and the MIME bodies.
    """

    HTML_SLOTS = ("body", "preheader", "prefs_url", "unsubscribe_url")
    TEXT_SLOTS = ("body", "prefs_url", "unsubscribe_url")

    def __init__(self, campaign: Campaign, merchant: Merchant, program: Program | None):
        self.campaign = campaign
        self.merchant = merchant
        self.program = program
        # Reminders about the customer's own card stop with their own opt-out,
        # and explain what is missing from the profile.
        self.reminder = campaign.kind in REMINDER_KINDS
        self.consent_channel = "reminders" if self.reminder else None
        self.unsubscribe_channel = "reminders" if self.reminder else "all"
        self.template = "email/reminder_campaign" if self.reminder else "email/campaign"
        self.may_receive = eligibility.may_receive("email", merchant,
                                                   consent_channel=self.consent_channel)
        # build() issues the campaign's voucher, a write, when it has one.
        self.builds_without_writing = not campaign.voucher_title
        self.compiled: dict[str, rendering.CompiledContent] = {}
        self.shells: dict[str, tuple[rendering.TemplateShells, rendering.TemplateShells]] = {}
        self.home_url = links.absolute("/")
        self.host = self.home_url.split("://", 1)[-1].strip("/").split("/")[0].split(":")[0]
        self.links = links.BulkLinks(self.unsubscribe_channel)
        self.composer = transport.BulkComposer(merchant, {
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": f"{rendering.single_line(merchant.name)} <{merchant.slug}.{self.host}>",
            "Precedence": "bulk",
        })

    def _shells_for(self, content: rendering.CompiledContent):
        if content.locale not in self.shells:
            context = {"merchant": self.merchant, "content": content, "kind": self.campaign.kind}
            html_slots = self.HTML_SLOTS if content.preheader else tuple(
                s for s in self.HTML_SLOTS if s != "preheader")

            def render(extension, customer, **slots):
                with force_locale(content.locale):
                    if extension == "html" and "preheader" not in slots:
                        slots["preheader"] = ""
                    return render_template(f"{self.template}.{extension}", customer=customer,
                                           **context, **slots)

            self.shells[content.locale] = (
                rendering.TemplateShells(functools.partial(render, "html"), html_slots),
                rendering.TemplateShells(functools.partial(render, "txt"), self.TEXT_SLOTS),
            )
        return self.shells[content.locale]

    def build(self, message: Message, customer: Customer, card: Card | None):
        """The email for this row (a RawMessage, or an EmailMessage for a non-ASCII address)."""
        content = _content_for(self.campaign, self.merchant, customer, self.compiled)
        voucher_code = _issue_voucher(self.campaign, message, customer, card)
        card_url = self.links.card_url(card) if card else self.home_url
        values = rendering.recipient_values(customer, card, self.program,
                                            voucher_code=voucher_code, card_url=card_url)
        unsubscribe = self.links.unsubscribe_url(customer)
        prefs = self.links.prefs_url(customer)
        html_shell, text_shell = self._shells_for(content)
        html = html_shell.fill(customer, {
            "body": rendering.personalise(content.html_body, values, html=True),
            "preheader": str(escape(rendering.personalise(content.preheader, values))),
            "prefs_url": str(escape(prefs)), "unsubscribe_url": str(escape(unsubscribe)),
        })
        text = text_shell.fill(customer, {
            "body": rendering.personalise(content.text_body, values),
            "prefs_url": prefs, "unsubscribe_url": unsubscribe,
        })
        return self.composer.compose(
            to=customer.email,
            subject=rendering.single_line(rendering.personalise(content.subject, values)),
            text=text, html=html,
            message_id=self.composer.message_id(f"m{message.id}.c{self.campaign.id}"),
            headers={"List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@{self.host}"
                                         f"?subject=unsubscribe-{message.id}>"},
        )


def _message_id_of(email) -> str:
    return email.message_id if isinstance(email, transport.RawMessage) else email["Message-ID"]


def _batch_time_budget() -> float:
    """Seconds a send batch may spend sending: half its job timeout."""
    return current_app.config["SEND_JOB_TIMEOUT"] / 2


def _send_emails(emails: _Emails, audience: _Audience, recorder: outbox.Recorder,
                 rows: list[Message], outcome: dict[str, int]) -> bool:
    """Send the batch's email rows; True when it ran out of time and gave the rest back."""
    campaign, merchant = emails.campaign, emails.merchant
    now = utcnow()
    remaining = list(reversed(rows))  # popped from the end: the lowest id first
    checked_at = 0.0

    def skipped(message: Message, customer: Customer | None) -> bool:
        reason = audience.skip_reason(customer, "email", merchant, now, emails.consent_channel)
        if reason:
            recorder.skipped(message, reason)
            outcome["skipped"] += 1
        return reason is not None

    # The next message, built while the server reads the current one
    # (connection.send's `meanwhile`): the worker's CPU and the server's
    # overlap instead of taking turns. Only building happens early: it writes
    # nothing (never with a voucher to issue), and every check and the
    # in-flight statement still come in order, after the previous answer.
    ahead: dict[str, tuple] = {}

    def build_next() -> None:
        ahead.clear()
        if not remaining or not emails.builds_without_writing:
            return
        message = remaining[-1]
        customer = audience.customers.get(message.customer_id)
        if customer is None or audience.skip_reason(customer, "email", merchant, now,
                                                    emails.consent_channel):
            return
        try:
            email = emails.build(message, customer, audience.cards.get(customer.id))
        except Exception:  # built again in its turn, and raises there
            return
        ahead["next"] = (message, customer, customer.email, email)

    def built(message: Message, customer: Customer):
        early = ahead.pop("next", None)
        if early is not None and early[0] is message and early[1] is customer \
                and early[2] == customer.email:
            return early[3]
        return emails.build(message, customer, audience.cards.get(customer.id))

    # Stop well inside the job timeout: a slow but answering mail server must
    # never get the work-horse killed mid-DATA (that row would end `unknown`).
    # What is left goes back to pending and to a new job.
    deadline = time.monotonic() + _batch_time_budget()
    with transport.open_connection() as connection:
        while remaining:
            message = remaining.pop()
            if sum(outcome.values()) and time.monotonic() >= deadline:
                recorder.release([message, *reversed(remaining)],
                                 "the batch used its time; handed to a new job")
                return True
            # Pause and cancel take effect within a second, without a query per message.
            if time.monotonic() - checked_at >= STATUS_CHECK_SECONDS:
                checked_at = time.monotonic()
                if not _still_sending(campaign.id):
                    recorder.release([message, *reversed(remaining)],
                                     "campaign paused or cancelled")
                    return False
            customer = audience.customers.get(message.customer_id)
            if skipped(message, customer):
                continue
            to_address = customer.email
            email = built(message, customer)
            # Committed before the message goes on the wire, and only if the
            # customer may still get it right now (one statement, no transaction
            # open across the network round trip). The statement runs while the
            # server takes MAIL and RCPT, which deliver nothing; DATA waits for it.
            went = recorder.in_flight_soon(message, _message_id_of(email), to_address,
                                           may_receive=emails.may_receive)
            failure = None
            try:
                connection.send(email, meanwhile=build_next, before_data=went)
            except transport.TransportError as exc:
                failure = exc
            if not went():
                # Not in flight, so not sent (the transport stopped before DATA,
                # or failed before it): whatever the server said, decide afresh.
                fresh = audience.refresh(message.customer_id)
                if skipped(message, fresh):
                    continue
                if fresh.email != to_address:
                    remaining.append(message)  # a new address: build it again
                    continue
                if not recorder.in_flight(message, _message_id_of(email), to_address):
                    # The lease ran out: the reconciler has given this row and the
                    # rest of the batch to another job. Sending now could deliver twice.
                    current_app.logger.warning(
                        "campaign %s: batch outlived its lease; %d rows left to other jobs",
                        campaign.id, len(remaining) + 1)
                    return False
                failure = None
                try:
                    connection.send(email, meanwhile=build_next)
                except transport.TransportError as exc:
                    failure = exc
            # Re-raised to sort it, so the handlers read as they would around send().
            try:
                if failure is not None:
                    raise failure
            except transport.PermanentFailure as exc:
                recorder.failed(message, f"{exc.code or ''} {exc}".strip())
                _suppress_email(customer.id)
                outcome["failed"] += 1
            except transport.TemporaryFailure as exc:
                if exc.maybe_sent:
                    recorder.unknown(message, str(exc))
                    outcome["unknown"] += 1
                else:
                    recorder.retry_later(message, f"{exc.code or ''} {exc}".strip())
                    outcome["retry"] += 1
                if exc.code is None:
                    # The connection itself broke: give the rest back for a later job.
                    recorder.release(list(reversed(remaining)),
                                     "connection lost; released for a later batch")
                    return False
            else:
                # Written `sent` with the next message's in-flight statement.
                recorder.note_sent(message)
                audience.count_sent(customer.id)
                outcome["sent"] += 1
                continue
            # Checked after each failure, not only at the end of the batch: a
            # server that refuses everything (relaying denied, a blocked IP)
            # would otherwise bounce and suppress the whole batch first.
            if _auto_pause_on_error_burst(campaign.id, outcome):
                recorder.release(list(reversed(remaining)),
                                 "campaign paused after an error burst")
                return False
    return False


def _suppress_email(customer_id: int) -> None:
    """A hard bounce: this address gets no more email from us."""
    begin_write()
    customer = db.session.get(Customer, customer_id)
    if customer.email_suppressed_at is None:
        customer.email_suppressed_at = utcnow()
    db.session.commit()


def _issue_voucher(campaign, message, customer, card) -> str | None:
    """The campaign's voucher for this row, issued once (a retry reuses it)."""
    if not campaign.voucher_title or customer is None:
        return None
    from ..loyalty import vouchers
    from ..models import Voucher

    if message.voucher_id is None:
        begin_write()
        voucher = vouchers.issue(
            campaign.merchant_id, customer.id, kind="campaign",
            title=campaign.voucher_title, valid_days=campaign.voucher_valid_days,
            card_id=card.id if card else None,
            origin={"campaign_id": campaign.id, "message_id": message.id},
        )
        message.voucher_id = voucher.id
        db.session.commit()
        return voucher.code
    code = db.session.scalar(select(Voucher.code).where(Voucher.id == message.voucher_id))
    db.session.commit()
    return code


def _send_wallet(campaign, merchant, program, message, audience, recorder, compiled,
                 outcome) -> None:
    now = utcnow()
    customer = audience.refresh(message.customer_id)
    reason = audience.skip_reason(
        customer, "wallet", merchant, now,
        "reminders" if campaign.kind in REMINDER_KINDS else None,
    )
    if reason:
        recorder.skipped(message, reason)
        outcome["skipped"] += 1
        return
    later = eligibility.quiet_until(merchant, now)
    if later is not None:
        recorder.defer(message, later, "quiet hours: waits until morning")
        outcome["deferred"] += 1
        return
    card = audience.cards.get(customer.id)
    content = _content_for(campaign, merchant, customer, compiled)
    card_url = links.card_url(card) if card else ""
    values = rendering.recipient_values(customer, card, program,
                                        voucher_code=_issue_voucher(campaign, message,
                                                                    customer, card),
                                        card_url=card_url)
    text = rendering.single_line(rendering.personalise(content.wallet_text, values))
    result = _wallet_sender()(merchant.id, card.id if card else None, text)
    if result.get("status") == "sent":
        recorder.sent(message, detail=result.get("detail"))
        audience.count_sent(customer.id)
        outcome["sent"] += 1
    elif result.get("status") == "skipped":
        recorder.skipped(message, result.get("reason") or SKIP_WALLET_NOT_CONFIGURED)
        outcome["skipped"] += 1
    else:
        recorder.retry_later(message, result.get("detail") or "wallet update failed")
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


def _auto_pause_on_error_burst(campaign_id: int, outcome: dict[str, int]) -> bool:
    """Pause the campaign if this batch is going badly; True when it is paused now."""
    errors = outcome["failed"] + outcome["retry"] + outcome["unknown"]
    tried = errors + outcome["sent"]
    if errors < ERROR_BURST_MIN or errors < ERROR_BURST_RATIO * tried:
        return False
    reason = _("Paused automatically: %(errors)d of %(tried)d messages in one batch failed. "
               "Check the mail server, then resume.", errors=errors, tried=tried)
    try:
        pause(campaign_id, reason)
    except CampaignStateError:
        return True  # paused (or cancelled) already, by this batch or another
    current_app.logger.warning("campaign %s auto-paused: %s", campaign_id, reason)
    return True


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
