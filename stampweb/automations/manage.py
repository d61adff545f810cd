"""Switching flows on and off, saving their settings and content, and their results.

Each flow owns one Campaign (kind = the flow's kind): `sending` while the
flow is on, `paused` while it is off, fan-out marked done so the campaign
machinery never fans it out nor marks it sent (sending.finish_if_done only
finishes one-off campaigns).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask_babel import force_locale
from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select

from ..campaigns import outbox, rendering
from ..campaigns import variants as variant_rules
from ..database import begin_write
from ..extensions import db
from ..models import (
    VISIT_STAMP,
    VOUCHER_REDEEMED,
    AutomationFiring,
    AutomationFlow,
    Merchant,
    Program,
    Tag,
    Visit,
    Voucher,
    utcnow,
)
from ..models.automations import FLOW_KINDS
from ..models.campaigns import (
    CAMPAIGN_PAUSED,
    CAMPAIGN_SENDING,
    MSG_PENDING,
    MSG_SENT,
    MSG_SKIPPED,
    SKIP_CANCELLED,
    Campaign,
    Message,
)
from ..tenancy import tenant
from .engine import local_now
from .flows import FLOWS

CHANNEL_CHOICES = ("email", "wallet", "both")
CONTENT_FIELDS = ("subject", "preheader", "body_markdown", "wallet_text")
# How far back "came back after a message" looks; older sends are history.
RESULTS_WINDOW = timedelta(days=365)


class AutomationError(ValueError):
    """Bad settings or content; `errors` maps each form field to its message."""

    def __init__(self, errors: dict[str, object]):
        super().__init__(", ".join(errors))
        self.errors = errors


def ensure_flows(merchant_id: int) -> list[AutomationFlow]:
    """Every kind's flow for the merchant, created switched off with default content."""
    with tenant(merchant_id):
        flows = {f.kind: f for f in db.session.scalars(select(AutomationFlow))}
        missing = [kind for kind in FLOW_KINDS if kind not in flows]
        if missing:
            merchant = db.session.get(Merchant, merchant_id)
            with force_locale(merchant.locale or "en"):
                for kind in missing:
                    spec = FLOWS[kind]
                    campaign = Campaign(
                        merchant_id=merchant_id, name=str(spec.label), kind=kind,
                        status=CAMPAIGN_PAUSED, channels=spec.default_channels,
                        audience={"type": "automation", "kind": kind}, fanout_done=True,
                        **spec.default_content(),
                    )
                    db.session.add(campaign)
                    db.session.flush()
                    flows[kind] = AutomationFlow(
                        merchant_id=merchant_id, kind=kind, enabled=False,
                        settings=spec.defaults(), campaign_id=campaign.id,
                    )
                    db.session.add(flows[kind])
            try:
                db.session.commit()
            except Exception:
                # Two first visits at once: the other one created them.
                db.session.rollback()
                flows = {f.kind: f for f in db.session.scalars(select(AutomationFlow))}
        return [flows[kind] for kind in FLOW_KINDS]


def get_flow(merchant_id: int, kind: str) -> AutomationFlow:
    if kind not in FLOWS:
        raise LookupError(kind)
    return {f.kind: f for f in ensure_flows(merchant_id)}[kind]


def _locked_flow(kind: str) -> AutomationFlow:
    return db.session.scalar(
        select(AutomationFlow).where(AutomationFlow.kind == kind).with_for_update()
        .execution_options(populate_existing=True)
    )


def content_problems(channels: str, content: dict) -> dict[str, object]:
    """What is wrong with a flow's message, by field (empty when it can be sent)."""
    errors: dict[str, object] = {}
    if channels not in CHANNEL_CHOICES:
        errors["channels"] = _l("Choose email, wallet or both.")
        return errors
    if channels in ("email", "both"):
        if not content.get("subject", "").strip():
            errors["subject"] = _l("An email needs a subject.")
        if not content.get("body_markdown", "").strip():
            errors["body_markdown"] = _l("An email needs a message.")
    if channels in ("wallet", "both") and not content.get("wallet_text", "").strip():
        errors["wallet_text"] = _l("A wallet message needs its text.")
    if len(content.get("wallet_text", "")) > rendering.WALLET_TEXT_LIMIT:
        errors["wallet_text"] = _l("At most %(n)d characters on the wallet card.",
                                   n=rendering.WALLET_TEXT_LIMIT)
    for name, limit in (("subject", 200), ("preheader", 200)):
        if len(content.get(name, "")) > limit:
            errors[name] = _l("Use at most %(n)d characters.", n=limit)
    for name in CONTENT_FIELDS:
        unknown = rendering.unknown_placeholders(content.get(name, ""))
        if unknown and name not in errors:
            errors[name] = _l("Unknown placeholder: %(names)s. You can use %(known)s.",
                              names=", ".join("{" + u + "}" for u in unknown),
                              known=", ".join("{" + p + "}" for p in rendering.PLACEHOLDERS))
    return errors


def clean_settings(merchant_id: int, kind: str, raw: dict) -> tuple[dict, dict[str, object]]:
    """Each setting parsed and range-checked; returns (settings, errors by field name)."""
    spec = FLOWS[kind]
    clean: dict = {}
    errors: dict[str, object] = {}
    for setting in spec.settings:
        value = raw.get(setting.name, setting.default)
        if setting.kind == "int":
            try:
                number = int(str(value).strip())
            except (TypeError, ValueError):
                errors[setting.name] = _l("Enter a whole number.")
                continue
            if not setting.minimum <= number <= setting.maximum:
                errors[setting.name] = _l("Enter a number from %(lo)d to %(hi)d.",
                                          lo=setting.minimum, hi=setting.maximum)
                continue
            clean[setting.name] = number
        elif setting.kind == "choice":
            if value not in {c for c, _label in setting.choices}:
                errors[setting.name] = _l("Choose one of the options.")
                continue
            clean[setting.name] = value
        elif setting.kind == "tag":
            try:
                tag_id = int(value) if value not in (None, "") else None
            except (TypeError, ValueError):
                tag_id = None
            with tenant(merchant_id):
                exists = tag_id is not None and db.session.scalar(
                    select(Tag.id).where(Tag.id == tag_id)) is not None
            if value not in (None, "") and not exists:
                errors[setting.name] = _l("Choose one of your tags.")
                continue
            clean[setting.name] = tag_id
        else:
            text = " ".join(str(value or "").split())
            if len(text) > 200:
                errors[setting.name] = _l("Use at most %(n)d characters.", n=200)
                continue
            clean[setting.name] = text
    return clean, errors


def save_flow(
    merchant_id: int,
    kind: str,
    *,
    settings: dict,
    local_hour,
    channels: str,
    content: dict,
    variants: dict | None = None,
) -> AutomationFlow:
    """Save a flow's settings, firing hour and message; all or nothing.

    Raises AutomationError with a message per field; nothing is saved then.
    """
    get_flow(merchant_id, kind)
    clean, errors = clean_settings(merchant_id, kind, settings)
    try:
        hour = int(str(local_hour).strip())
        if not 0 <= hour <= 23:
            raise ValueError
    except (TypeError, ValueError):
        errors["local_hour"] = _l("Choose an hour from 0 to 23.")
        hour = None
    content = {name: (content.get(name) or "").strip() for name in CONTENT_FIELDS}
    errors.update(content_problems(channels, content))
    if variants is not None:
        with tenant(merchant_id):
            merchant = db.session.get(Merchant, merchant_id)
        variants, variant_errors = variant_rules.clean(variants, channels, merchant.locale)
        errors.update(variant_errors)
    if errors:
        raise AutomationError(errors)
    with tenant(merchant_id):
        begin_write()
        try:
            flow = _locked_flow(kind)
            if flow.enabled and kind == "tag_notify" and not clean.get("tag_id"):
                raise AutomationError({"tag_id": _l("Choose the tag whose customers hear this.")})
            flow.settings = clean
            flow.local_hour = hour
            campaign = db.session.get(Campaign, flow.campaign_id)
            program = db.session.scalar(select(Program).order_by(Program.id))
            campaign.channels = channels
            for name, value in content.items():
                setattr(campaign, name, value)
            if variants is not None:
                campaign.variants = variants
            spec = FLOWS[kind]
            # The sender shows the code of the voucher the engine issued with the
            # firing; the title only tells it that this flow has one.
            campaign.voucher_title = spec.voucher_title(spec.effective(clean), program)
            campaign.voucher_valid_days = clean.get("voucher_valid_days")
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        return flow


def set_enabled(merchant_id: int, kind: str, enabled: bool,
                now: datetime | None = None) -> AutomationFlow:
    """Switch a flow on (it first fires at its next hour, today's if that has passed) or off.

    Switching off skips the messages still waiting, so switching on again
    months later never sends stale birthday wishes.
    """
    now = now or utcnow()
    get_flow(merchant_id, kind)
    with tenant(merchant_id):
        begin_write()
        try:
            flow = _locked_flow(kind)
            campaign = db.session.scalar(
                select(Campaign).where(Campaign.id == flow.campaign_id).with_for_update())
            if enabled and not flow.enabled:
                spec = FLOWS[kind]
                errors = content_problems(campaign.channels, {
                    name: getattr(campaign, name) or "" for name in CONTENT_FIELDS})
                settings = spec.effective(flow.settings)
                if kind == "tag_notify" and not settings.get("tag_id"):
                    errors["tag_id"] = _l("Choose the tag whose customers hear this.")
                if errors:
                    raise AutomationError(errors)
                merchant = db.session.get(Merchant, merchant_id)
                flow.enabled = True
                flow.enabled_at = now
                # Today's firing happens at the flow's hour (now, if it has passed);
                # the days it was off are not caught up.
                flow.last_evaluated_local_date = local_now(merchant, now).date() - timedelta(
                    days=1)
                campaign.status = CAMPAIGN_SENDING
                campaign.fanout_done = True
                campaign.started_at = campaign.started_at or now
                campaign.paused_reason = None
            elif not enabled and flow.enabled:
                flow.enabled = False
                campaign.status = CAMPAIGN_PAUSED
                waiting = db.session.scalars(
                    select(Message).where(Message.campaign_id == campaign.id,
                                          Message.status == MSG_PENDING)
                ).all()
                for message in waiting:
                    message.status = MSG_SKIPPED
                    message.skip_reason = SKIP_CANCELLED
                    outbox.log_event(message, MSG_SKIPPED, "automation switched off")
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        return flow


def results(merchant_id: int, kind: str, now: datetime | None = None) -> dict:
    """The campaign metrics for a flow: targeted, sent, skipped by reason, failed,
    vouchers issued and redeemed, and customers who came back within the
    campaign's attribution window after a message."""
    now = now or utcnow()
    flow = get_flow(merchant_id, kind)
    with tenant(merchant_id):
        campaign = db.session.get(Campaign, flow.campaign_id)
        counts = outbox.counts(campaign.id)
        fired = db.session.scalar(select(func.count(AutomationFiring.id)).where(
            AutomationFiring.flow_id == flow.id)) or 0
        issued = db.session.scalar(select(func.count(AutomationFiring.voucher_id)).where(
            AutomationFiring.flow_id == flow.id)) or 0
        redeemed = db.session.scalar(
            select(func.count(Voucher.id))
            .join(AutomationFiring, AutomationFiring.voucher_id == Voucher.id)
            .where(AutomationFiring.flow_id == flow.id, Voucher.status == VOUCHER_REDEEMED)
        ) or 0
        sent = db.session.execute(
            select(Message.customer_id, func.max(Message.sent_at))
            .where(Message.campaign_id == campaign.id, Message.status == MSG_SENT,
                   Message.sent_at >= now - RESULTS_WINDOW, Message.customer_id.is_not(None))
            .group_by(Message.customer_id)
        ).all()
        came_back = 0
        if sent:
            window = timedelta(days=campaign.attribution_days)
            last_sent = dict(sent)
            first = min(last_sent.values())
            visits = db.session.execute(
                select(Visit.customer_id, Visit.created_at)
                .where(Visit.customer_id.in_(list(last_sent)), Visit.kind == VISIT_STAMP,
                       Visit.created_at >= first)
            ).all()
            back = {cid for cid, at in visits
                    if last_sent[cid] <= at <= last_sent[cid] + window}
            came_back = len(back)
        db.session.commit()
    return {**counts, "targeted": counts["total"], "fired": fired,
            "vouchers_issued": issued, "vouchers_redeemed": redeemed, "came_back": came_back,
            "attribution_days": campaign.attribution_days}
