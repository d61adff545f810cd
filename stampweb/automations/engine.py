"""The automation engine: evaluate every switched-on flow and fire it once per occurrence.

`rq cron` calls `run()` every 15 minutes. A daily flow fires for a local date
once the merchant's clock has passed the flow's hour on that date. Every
local date after the flow's checkpoint (`last_evaluated_local_date`) up to
today is evaluated in order, at most MAX_CATCH_UP_DAYS of them, so downtime
never skips a day's firing.

Exactly once, whatever runs twice: each date is evaluated in one transaction
that holds the flow's row lock (two runners queue on it, and the second finds
the checkpoint moved), an AutomationFiring row with a unique (flow, customer,
occurrence) key is written before anything is given, and the outbox's own
(campaign, customer, channel, occurrence) key absorbs a second
materialisation. Vouchers and the birthday card state are granted in that
same transaction, before the send job can see the message rows, so
{voucher_code} always has its code.

`now` is passed explicitly everywhere (naive UTC), so tests can freeze time
per call without patching the clock.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update

from .. import events
from ..campaigns import outbox, sending
from ..database import begin_write
from ..extensions import db
from ..loyalty import vouchers
from ..models import (
    REWARD_STATE_BIRTHDAY,
    AutomationFiring,
    AutomationFlow,
    Card,
    Customer,
    Merchant,
    Program,
    utcnow,
)
from ..models.campaigns import Campaign, Message
from ..tenancy import tenant, unscoped
from .flows import FLOWS, Candidate, Day

log = logging.getLogger(__name__)

MAX_CATCH_UP_DAYS = 7
MATERIALISE_CHUNK = 500


@dataclass
class Firing:
    """One customer a flow fires (or would fire) for."""

    customer_id: int
    name: str
    occurrence: str
    channels: tuple[str, ...]
    local_date: date
    gift: str = ""


@dataclass
class FlowRun:
    """What one flow did (or would do) in one engine run."""

    merchant_id: int
    kind: str
    dates: list[date] = field(default_factory=list)
    firings: list[Firing] = field(default_factory=list)
    messages: int = 0  # outbox rows handed to send jobs


def merchant_zone(merchant: Merchant) -> ZoneInfo:
    try:
        return ZoneInfo(merchant.timezone or "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def local_now(merchant: Merchant, now: datetime) -> datetime:
    return now.replace(tzinfo=UTC).astimezone(merchant_zone(merchant))


def last_due_date(flow: AutomationFlow, local: datetime) -> date:
    """The latest local date whose firing time (the flow's hour) has come."""
    today = local.date()
    return today if local.hour >= flow.local_hour else today - timedelta(days=1)


def due_dates(flow: AutomationFlow, local: datetime) -> list[date]:
    """Local dates still to evaluate: after the checkpoint, up to the last due one (bounded)."""
    last_due = last_due_date(flow, local)
    first = (flow.last_evaluated_local_date + timedelta(days=1)
             if flow.last_evaluated_local_date else last_due)
    first = max(first, last_due - timedelta(days=MAX_CATCH_UP_DAYS - 1))
    return [first + timedelta(days=n) for n in range((last_due - first).days + 1)]


# --- running ---------------------------------------------------------------------


def merchants_with_flows_on() -> list[int]:
    with unscoped():
        return list(db.session.scalars(
            select(AutomationFlow.merchant_id).where(AutomationFlow.enabled.is_(True))
            .distinct().order_by(AutomationFlow.merchant_id)
        ))


def run(merchant_id: int | None = None, now: datetime | None = None,
        dry_run: bool = False) -> list[FlowRun]:
    """Evaluate every switched-on flow (of one merchant, or of all); return what fired.

    With dry_run nothing is written or sent: the result says who would get what.
    """
    now = now or utcnow()
    merchant_ids = [merchant_id] if merchant_id is not None else merchants_with_flows_on()
    results: list[FlowRun] = []
    for mid in merchant_ids:
        try:
            results += run_merchant(mid, now, dry_run=dry_run)
        except Exception:  # one merchant's trouble must not stop the others
            db.session.rollback()
            log.exception("automations for merchant %s failed", mid)
            if merchant_id is not None:
                raise
    return results


def run_merchant(merchant_id: int, now: datetime, dry_run: bool = False) -> list[FlowRun]:
    with tenant(merchant_id):
        flows = db.session.scalars(
            select(AutomationFlow).where(AutomationFlow.enabled.is_(True))
            .order_by(AutomationFlow.id)
        ).all()
        flow_ids = [(flow.id, flow.kind) for flow in flows if flow.kind in FLOWS]
        db.session.commit()
        return [run_flow(merchant_id, flow_id, now, dry_run=dry_run)
                for flow_id, _kind in flow_ids]


def run_flow(merchant_id: int, flow_id: int, now: datetime, dry_run: bool = False) -> FlowRun:
    """Evaluate one flow for every due local date (continuous flows: for now)."""
    with tenant(merchant_id):
        flow = db.session.get(AutomationFlow, flow_id)
        spec = FLOWS[flow.kind]
        merchant = db.session.get(Merchant, merchant_id)
        result = FlowRun(merchant_id, flow.kind)
        local = local_now(merchant, now)
        dates = [local.date()] if spec.continuous else due_dates(flow, local)
        db.session.commit()
        for day in dates:
            if dry_run:
                result.firings += _would_fire(merchant, flow_id, day, now)
            else:
                fired, _added = _evaluate(merchant_id, flow_id, day, now)
                result.firings += fired
            result.dates.append(day)
        if not dry_run and dates:
            # Not keyed on `added`: the rows may come from a run that died
            # between its commit and this enqueue.
            campaign_id = db.session.scalar(
                select(AutomationFlow.campaign_id).where(AutomationFlow.id == flow_id))
            result.messages = sending.enqueue_due(campaign_id, stale_after=timedelta(0))
            db.session.commit()
        return result


def _day(merchant: Merchant, local_date: date, now: datetime) -> Day:
    return Day(merchant.id, merchant_zone(merchant), local_date, now)


def _new_candidates(flow: AutomationFlow, candidates: list[Candidate]) -> tuple[
        list[Candidate], dict[tuple[int, str], AutomationFiring]]:
    """Split out the (customer, occurrence) pairs that already fired."""
    occurrences = {c.occurrence for c in candidates}
    existing = {}
    if occurrences:
        for firing in db.session.scalars(
            select(AutomationFiring).where(AutomationFiring.flow_id == flow.id,
                                           AutomationFiring.occurrence.in_(occurrences))
        ):
            existing[(firing.customer_id, firing.occurrence)] = firing
    seen = set()
    unique = []
    for candidate in candidates:
        key = (candidate.customer_id, candidate.occurrence)
        if key not in seen:
            seen.add(key)
            unique.append(candidate)
    return unique, existing


def _names(customer_ids) -> dict[int, str]:
    ids = list(customer_ids)
    if not ids:
        return {}
    return {c.id: c.display_name for c in db.session.scalars(
        select(Customer).where(Customer.id.in_(ids)))}


def _would_fire(merchant: Merchant, flow_id: int, local_date: date,
                now: datetime) -> list[Firing]:
    flow = db.session.get(AutomationFlow, flow_id)
    spec = FLOWS[flow.kind]
    settings = spec.effective(flow.settings)
    candidates, existing = _new_candidates(flow, spec.select(_day(merchant, local_date, now),
                                                             settings, flow))
    program = db.session.scalar(select(Program).order_by(Program.id))
    gift = spec.voucher_title(settings, program) or (
        program.birthday_gift_text if flow.kind == "birthday" else "")
    fresh = [c for c in candidates
             if (c.customer_id, c.occurrence) not in existing and c.channels != ()]
    names = _names(c.customer_id for c in fresh)
    channels = tuple(flow.campaign.channel_list)
    return [Firing(c.customer_id, names.get(c.customer_id, f"#{c.customer_id}"),
                   c.occurrence, c.channels if c.channels is not None else channels,
                   local_date, gift or "") for c in fresh]


def _evaluate(merchant_id: int, flow_id: int, local_date: date,
              now: datetime) -> tuple[list[Firing], int]:
    """Fire one flow for one local date in one transaction; return the firings and new rows."""
    begin_write()
    try:
        flow = db.session.scalar(
            select(AutomationFlow).where(AutomationFlow.id == flow_id).with_for_update()
            .execution_options(populate_existing=True)
        )
        spec = FLOWS[flow.kind]
        if not flow.enabled or (not spec.continuous and flow.last_evaluated_local_date
                                and flow.last_evaluated_local_date >= local_date):
            db.session.commit()  # another run got here first
            return [], 0
        merchant = db.session.get(Merchant, merchant_id)
        campaign = db.session.get(Campaign, flow.campaign_id)
        program = db.session.scalar(select(Program).order_by(Program.id))
        settings = spec.effective(flow.settings)
        day = _day(merchant, local_date, now)
        candidates, existing = _new_candidates(flow, spec.select(day, settings, flow))

        fired: list[Firing] = []
        changed_cards: set[int] = set()
        groups: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
        vouchers_for: dict[tuple[int, str], int] = {}
        default_channels = tuple(campaign.channel_list)
        names = _names(c.customer_id for c in candidates
                       if (c.customer_id, c.occurrence) not in existing)
        for candidate in candidates:
            channels = (candidate.channels if candidate.channels is not None
                        else default_channels)
            key = (candidate.customer_id, candidate.occurrence)
            firing = existing.get(key)
            if firing is None:
                if not channels:
                    continue  # nothing ready yet (welcome: email not confirmed)
                firing, gift = _fire(flow, spec, day, settings, program, candidate,
                                     changed_cards)
                fired.append(Firing(candidate.customer_id,
                                    names.get(candidate.customer_id, ""),
                                    candidate.occurrence, channels, local_date, gift))
            elif not spec.continuous:
                continue  # daily flows materialise once, when they fire
            if firing.voucher_id is not None:
                vouchers_for[key] = firing.voucher_id
            if channels:
                groups[(candidate.occurrence, channels)].append(candidate.customer_id)

        added = 0
        for (occurrence, channels), ids in groups.items():
            for start in range(0, len(ids), MATERIALISE_CHUNK):
                added += outbox.materialise(merchant_id, campaign.id,
                                            ids[start:start + MATERIALISE_CHUNK],
                                            channels, occurrence=occurrence)
        for (customer_id, occurrence), voucher_id in vouchers_for.items():
            db.session.execute(
                update(Message)
                .where(Message.campaign_id == campaign.id, Message.customer_id == customer_id,
                       Message.occurrence == occurrence, Message.voucher_id.is_(None))
                .values(voucher_id=voucher_id)
                .execution_options(synchronize_session=False)
            )
        if not spec.continuous:
            flow.last_evaluated_local_date = local_date
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    for card_id in changed_cards:
        events.send(events.card_changed, merchant_id=merchant_id, card_id=card_id)
    if fired:
        log.info("automation %s of merchant %s fired %d for %s", flow.kind, merchant_id,
                 len(fired), local_date)
    return fired, added


def _fire(flow, spec, day: Day, settings: dict, program, candidate: Candidate,
          changed_cards: set[int]) -> tuple[AutomationFiring, str]:
    """Record the firing and grant its voucher or card state (same transaction)."""
    card = db.session.scalar(select(Card).where(Card.customer_id == candidate.customer_id)
                             .order_by(Card.id).limit(1))
    grant = spec.grant(day, settings, program)
    firing = AutomationFiring(merchant_id=flow.merchant_id, flow_id=flow.id,
                              customer_id=candidate.customer_id,
                              occurrence=candidate.occurrence, local_date=day.date)
    gift = ""
    if grant is not None and grant.voucher_title:
        voucher = vouchers.issue(
            flow.merchant_id, candidate.customer_id, kind=grant.voucher_kind,
            title=grant.voucher_title, expires_at=grant.expires_at,
            card_id=card.id if card else None, now=day.now,
            origin={"automation": flow.kind, "flow_id": flow.id,
                    "occurrence": candidate.occurrence},
        )
        firing.voucher_id = voucher.id
        gift = grant.voucher_title
        if card is not None:
            changed_cards.add(card.id)
    elif grant is not None and grant.birthday_state_until and card is not None:
        card.reward_state = REWARD_STATE_BIRTHDAY
        card.reward_state_expires_at = grant.birthday_state_until
        card.updated_at = day.now
        changed_cards.add(card.id)
        gift = program.birthday_gift_text
    db.session.add(firing)
    db.session.flush()
    return firing, gift


# --- preview -----------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRow:
    local_date: date
    customer_id: int
    name: str
    occurrence: str


def preview(merchant_id: int, kind: str, now: datetime | None = None, days: int = 7,
            limit: int = 50) -> tuple[int, list[PreviewRow]]:
    """Who the flow would fire for in the next `days` local days, given today's data.

    Returns the total and the first `limit` rows, soonest first. Customers it
    has already fired for are left out.
    """
    now = now or utcnow()
    with tenant(merchant_id):
        flow = db.session.scalar(select(AutomationFlow).where(AutomationFlow.kind == kind))
        if flow is None:
            return 0, []
        spec = FLOWS[kind]
        merchant = db.session.get(Merchant, merchant_id)
        settings = spec.effective(flow.settings)
        local = local_now(merchant, now)
        today = local.date()
        if spec.continuous:
            dates = [today]
        else:
            first = today
            if flow.enabled and flow.last_evaluated_local_date is not None:
                first = max(today, flow.last_evaluated_local_date + timedelta(days=1))
            dates = [first + timedelta(days=n) for n in range(days)]
        seen: set[tuple[int, str]] = set()
        rows: list[tuple[date, Candidate]] = []
        for local_date in dates:
            candidates, existing = _new_candidates(
                flow, spec.select(_day(merchant, local_date, now), settings, flow))
            for candidate in candidates:
                key = (candidate.customer_id, candidate.occurrence)
                if key in existing or key in seen or candidate.channels == ():
                    continue
                seen.add(key)
                rows.append((local_date, candidate))
        names = _names(c.customer_id for _d, c in rows[:limit])
        db.session.commit()
        return len(rows), [PreviewRow(d, c.customer_id, names.get(c.customer_id, ""),
                                      c.occurrence) for d, c in rows[:limit]]
