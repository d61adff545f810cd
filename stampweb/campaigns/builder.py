"""The campaign builder's rules: drafts from plain values, the live audience, preview, test send.

Everything here takes a merchant id and plain values (what the form typed),
never the request, so the views stay thin and the rules are tested without HTTP.

- `save()` validates every field at once and raises `BuilderError` with one
  message per field; nothing is written unless all of it is valid.
- `audience_summary()` counts the audience, shows a few names, and says how
  many of them each channel can actually reach (consent, confirmation,
  suppression), using the segment compiler for the rules.
- `preview()` renders what one recipient would get, through the same
  rendering module and email templates the sender uses.
- `send_test()` sends the email version to one address (the merchant user's
  own) straight over the transport: no outbox row, not counted in results.
- `schedule()` reads a local date and time in the merchant's time zone;
  a time that does not exist there (the hour skipped when clocks go forward)
  is refused, an hour that happens twice takes its first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import func, select

from .. import links
from ..database import begin_write
from ..extensions import db
from ..i18n import LANGUAGES
from ..messaging import transport
from ..models import Card, Customer, Merchant, Program, utcnow
from ..models.campaigns import (
    CAMPAIGN_DRAFT,
    CAMPAIGN_SCHEDULED,
    CAMPAIGN_SENDING,
    MSG_FAILED,
    MSG_SENT,
    MSG_SKIPPED,
    MSG_UNKNOWN,
    Campaign,
    Message,
)
from ..models.segments import Segment, Tag
from ..tenancy import tenant
from . import outbox, rendering, segments, sending, variants

NAME_MAX = 120
SUBJECT_MAX = 200
PREHEADER_MAX = 200
BODY_MAX = 20_000
VOUCHER_TITLE_MAX = 200
VOUCHER_DAYS_MIN = 1
VOUCHER_DAYS_MAX = 365
SAMPLE_SIZE = 5
CHANNEL_CHOICES = ("email", "wallet", "both")
EDITABLE_STATES = (CAMPAIGN_DRAFT, CAMPAIGN_SCHEDULED)
# The progress fragment polls itself only while something can still change on its own.
LIVE_STATES = (CAMPAIGN_SENDING, CAMPAIGN_SCHEDULED)
# A campaign's voucher is issued at send time; the preview shows this stand-in.
PREVIEW_VOUCHER_CODE = "SAMPLE01"


class BuilderError(ValueError):
    """The values can't be saved (or the campaign can't go yet): `errors` maps field → message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class CampaignValues:
    """A campaign as the builder's form has it: strings as typed.

    `audience` is "all", "segment-<id>" or "tag-<id>".
    """

    name: str = ""
    audience: str = "all"
    channels: str = "email"
    subject: str = ""
    preheader: str = ""
    body_markdown: str = ""
    wallet_text: str = ""
    voucher: bool = False
    voucher_title: str = ""
    voucher_valid_days: str = ""
    # {"ru": {"subject": …, "preheader": …, "body_markdown": …, "wallet_text": …}}
    variants: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_campaign(cls, campaign: Campaign) -> CampaignValues:
        return cls(
            name=campaign.name or "",
            audience=audience_key(campaign.audience),
            channels=campaign.channels or "email",
            subject=campaign.subject or "",
            preheader=campaign.preheader or "",
            body_markdown=campaign.body_markdown or "",
            wallet_text=campaign.wallet_text or "",
            voucher=bool(campaign.voucher_title),
            voucher_title=campaign.voucher_title or "",
            voucher_valid_days=(str(campaign.voucher_valid_days)
                                if campaign.voucher_valid_days else ""),
            variants={locale: dict(texts) for locale, texts in (campaign.variants or {}).items()},
        )


# --- audience ----------------------------------------------------------------------------


def audience_key(audience: dict | None) -> str:
    """The builder's select value for a stored audience."""
    audience = audience or {}
    kind = audience.get("type", "all")
    if kind == "segment":
        return f"segment-{audience.get('segment_id')}"
    if kind == "tag":
        return f"tag-{audience.get('tag_id')}"
    return "all"


def parse_audience_key(key: str) -> dict | None:
    """The stored audience for a select value, or None if it is not one."""
    key = (key or "").strip()
    if key == "all":
        return {"type": "all"}
    kind, _sep, ident = key.partition("-")
    if kind in ("segment", "tag") and ident.isdigit() and len(ident) < 10 and int(ident) > 0:
        return {"type": kind, f"{kind}_id": int(ident)}
    return None


def tag_rules(tag_id: int) -> dict:
    return {"version": segments.RULES_VERSION, "match": "all", "groups": [
        {"match": "all", "conditions": [{"field": "has_tag", "op": "is", "value": tag_id}]}]}


def audience_rules(merchant_id: int, audience: dict) -> dict:
    """The audience as a segment rule tree; raises BuilderError if it can't be used."""
    kind = (audience or {}).get("type", "all")
    with tenant(merchant_id):
        if kind == "all":
            return segments.empty_rules()
        if kind == "segment":
            segment = db.session.scalar(select(Segment).where(
                Segment.id == audience.get("segment_id"), Segment.merchant_id == merchant_id))
            if segment is None:
                raise BuilderError({"audience": _("That segment does not exist (any more).")})
            try:
                return segments.validate_rules(segment.rules, merchant_id)
            except segments.SegmentError:
                raise BuilderError({"audience": _(
                    "The segment “%(name)s” needs fixing before it can be used.",
                    name=segment.name)}) from None
        if kind == "tag":
            found = db.session.scalar(select(Tag.id).where(
                Tag.id == audience.get("tag_id"), Tag.merchant_id == merchant_id))
            if found is None:
                raise BuilderError({"audience": _("That tag does not exist (any more).")})
            return tag_rules(found)
    raise BuilderError({"audience": _("Choose who gets this campaign.")})


def audience_choices(merchant_id: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """(group label, [(value, label)]) for the audience select."""
    with tenant(merchant_id):
        segment_rows = db.session.execute(
            select(Segment.id, Segment.name).where(Segment.merchant_id == merchant_id)
            .order_by(Segment.name)).all()
        tag_rows = db.session.execute(
            select(Tag.id, Tag.name).where(Tag.merchant_id == merchant_id)
            .order_by(Tag.name)).all()
    groups = [("", [("all", _("All members"))])]
    if segment_rows:
        groups.append((_("Segments"), [(f"segment-{i}", name) for i, name in segment_rows]))
    if tag_rows:
        groups.append((_("Tags"), [(f"tag-{i}", name) for i, name in tag_rows]))
    return groups


def audience_labels(merchant_id: int) -> dict[str, str]:
    """Select value → label, for lists and summaries."""
    return {value: label for _group, choices in audience_choices(merchant_id)
            for value, label in choices}


@dataclass
class AudienceSummary:
    count: int | None = None
    sample: list[Customer] = field(default_factory=list)
    # channel → how many of the audience it can reach now.
    reachable: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _channel_filter(merchant: Merchant, channel: str, statement):
    """Narrow an audience query to the customers `channel` can reach, as the sender decides.

    Consent comes from the segment rules (email consent there already excludes
    suppressed addresses); the address and the double opt-in confirmation are
    what eligibility.skip_reason adds at send time.
    """
    consent = segments.compile_segment(merchant.id, {"match": "all", "groups": [
        {"match": "all", "conditions": [{"field": "consent", "op": "granted",
                                         "value": channel}]}]})
    statement = statement.where(Customer.id.in_(consent.scalar_subquery()))
    if channel == "email":
        statement = statement.where(Customer.email.is_not(None), Customer.email != "")
        if merchant.double_opt_in:
            statement = statement.where(Customer.email_confirmed_at.is_not(None))
    return statement


def _count(statement) -> int:
    return db.session.scalar(select(func.count()).select_from(statement.subquery())) or 0


def audience_summary(merchant_id: int, audience_value: str, channels: str) -> AudienceSummary:
    """Live count, a few names, and how many each chosen channel reaches."""
    audience = parse_audience_key(audience_value)
    if audience is None:
        return AudienceSummary(error=_("Choose who gets this campaign."))
    try:
        rules = audience_rules(merchant_id, audience)
    except BuilderError as exc:
        return AudienceSummary(error=exc.errors["audience"])
    chosen = ["email", "wallet"] if channels == "both" else (
        [channels] if channels in ("email", "wallet") else [])
    with tenant(merchant_id):
        merchant = db.session.get(Merchant, merchant_id)
        statement = segments.compile_segment(merchant_id, rules)
        summary = AudienceSummary(
            count=_count(statement),
            sample=segments.sample_audience(merchant_id, rules, SAMPLE_SIZE),
        )
        for channel in chosen:
            summary.reachable[channel] = _count(_channel_filter(merchant, channel, statement))
    return summary


# --- validation and saving -----------------------------------------------------------------


def _placeholder_problem(text: str) -> str | None:
    unknown = rendering.unknown_placeholders(text)
    if not unknown:
        return None
    return _("Unknown placeholder %(names)s. You can use: %(known)s.",
             names=", ".join(f"{{{n}}}" for n in unknown),
             known=", ".join(f"{{{n}}}" for n in rendering.PLACEHOLDERS))


def validate(merchant_id: int, values: CampaignValues) -> dict:
    """The campaign's columns from `values`, or BuilderError listing every problem."""
    errors: dict[str, str] = {}
    name = (values.name or "").strip()
    if not name:
        errors["name"] = _("Give the campaign a name.")
    elif len(name) > NAME_MAX:
        errors["name"] = _("At most %(num)d characters.", num=NAME_MAX)

    audience = parse_audience_key(values.audience)
    if audience is None:
        errors["audience"] = _("Choose who gets this campaign.")
    else:
        try:
            audience_rules(merchant_id, audience)
        except BuilderError as exc:
            errors.update(exc.errors)

    channels = values.channels if values.channels in CHANNEL_CHOICES else None
    if channels is None:
        errors["channels"] = _("Choose email, wallet, or both.")
    email = channels in ("email", "both")
    wallet = channels in ("wallet", "both")

    subject = (values.subject or "").strip()
    if "\n" in subject or "\r" in subject:
        errors["subject"] = _("The subject must be one line.")
    elif len(subject) > SUBJECT_MAX:
        errors["subject"] = _("At most %(num)d characters.", num=SUBJECT_MAX)
    elif email and not subject:
        errors["subject"] = _("An email needs a subject.")

    preheader = (values.preheader or "").strip()
    if "\n" in preheader or "\r" in preheader:
        errors["preheader"] = _("The preheader must be one line.")
    elif len(preheader) > PREHEADER_MAX:
        errors["preheader"] = _("At most %(num)d characters.", num=PREHEADER_MAX)

    body = (values.body_markdown or "").strip()
    if len(body) > BODY_MAX:
        errors["body_markdown"] = _("At most %(num)d characters.", num=BODY_MAX)
    elif email and not body:
        errors["body_markdown"] = _("An email needs a message.")

    wallet_text = (values.wallet_text or "").strip()
    if "\n" in wallet_text or "\r" in wallet_text:
        errors["wallet_text"] = _("The wallet text must be one line.")
    elif len(wallet_text) > rendering.WALLET_TEXT_LIMIT:
        errors["wallet_text"] = _(
            "At most %(num)d characters: this is %(len)d.",
            num=rendering.WALLET_TEXT_LIMIT, len=len(wallet_text))
    elif wallet and not wallet_text:
        errors["wallet_text"] = _("A wallet message needs its text.")

    for name_, text in (("subject", subject), ("preheader", preheader),
                        ("body_markdown", body), ("wallet_text", wallet_text)):
        if name_ not in errors and (problem := _placeholder_problem(text)):
            errors[name_] = problem

    voucher_title = voucher_days = None
    if values.voucher:
        voucher_title = (values.voucher_title or "").strip()
        if not voucher_title:
            errors["voucher_title"] = _("Say what the voucher is for, e.g. “Free coffee”.")
        elif len(voucher_title) > VOUCHER_TITLE_MAX:
            errors["voucher_title"] = _("At most %(num)d characters.", num=VOUCHER_TITLE_MAX)
        raw_days = (values.voucher_valid_days or "").strip()
        if raw_days.isdigit() and VOUCHER_DAYS_MIN <= int(raw_days) <= VOUCHER_DAYS_MAX:
            voucher_days = int(raw_days)
        else:
            errors["voucher_valid_days"] = _(
                "Enter a number of days from %(min)d to %(max)d.",
                min=VOUCHER_DAYS_MIN, max=VOUCHER_DAYS_MAX)

    merchant = db.session.get(Merchant, merchant_id)
    clean_variants, variant_errors = variants.clean(values.variants, channels or "",
                                                    merchant.locale if merchant else None)
    errors.update(variant_errors)

    if errors:
        raise BuilderError(errors)
    return {
        "name": name, "audience": audience, "channels": channels, "subject": subject,
        "preheader": preheader, "body_markdown": body, "wallet_text": wallet_text,
        "voucher_title": voucher_title, "voucher_valid_days": voucher_days,
        "variants": clean_variants,
    }


def _editable(merchant_id: int, campaign_id: int, lock: bool = False) -> Campaign:
    with tenant(merchant_id):
        query = select(Campaign).where(Campaign.id == campaign_id,
                                       Campaign.merchant_id == merchant_id)
        if lock:
            query = query.with_for_update()
        campaign = db.session.scalar(query)
    if campaign is None:
        raise LookupError(f"campaign {campaign_id} not found")
    if campaign.status not in EDITABLE_STATES:
        raise sending.CampaignStateError(f"a {campaign.status} campaign cannot be edited")
    return campaign


def save(merchant_id: int, values: CampaignValues, campaign_id: int | None = None,
         user_id: int | None = None) -> Campaign:
    """Create or update a draft (or a scheduled campaign) from `values`; the caller commits.

    Raises BuilderError (nothing written), CampaignStateError when the campaign
    has started, LookupError when it is not the merchant's.
    """
    clean = validate(merchant_id, values)
    begin_write()
    with tenant(merchant_id):
        if campaign_id is None:
            campaign = Campaign(merchant_id=merchant_id, kind="oneoff", status=CAMPAIGN_DRAFT,
                                created_by_user_id=user_id)
            db.session.add(campaign)
        else:
            campaign = _editable(merchant_id, campaign_id, lock=True)
        for name, value in clean.items():
            setattr(campaign, name, value)
        db.session.flush()
    return campaign


def check_ready(merchant_id: int, campaign: Campaign) -> None:
    """Raise BuilderError if the stored campaign could not be sent as it is now.

    Things change after a save: a segment or tag may have been deleted since.
    """
    validate(merchant_id, CampaignValues.from_campaign(campaign))


# --- schedule and send --------------------------------------------------------------------


def merchant_zone(merchant: Merchant) -> ZoneInfo:
    try:
        return ZoneInfo(merchant.timezone or "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def local_to_utc(text: str, zone: ZoneInfo) -> datetime:
    """A `datetime-local` value ("2026-03-29T02:30") in `zone` as naive UTC.

    Raises BuilderError for a malformed value or a local time that does not
    exist (skipped by a clock change). A time that happens twice (clocks going
    back) is taken at its first occurrence.
    """
    text = (text or "").strip()
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        raise BuilderError({"scheduled_at": _("Enter a date and time.")}) from None
    if local.tzinfo is not None or not text:
        raise BuilderError({"scheduled_at": _("Enter a date and time.")})
    first = local.replace(tzinfo=zone, fold=0)
    as_utc = first.astimezone(UTC)
    if as_utc.astimezone(zone).replace(tzinfo=None) != local:
        raise BuilderError({"scheduled_at": _(
            "%(time)s does not exist in %(zone)s: the clocks skip that hour. "
            "Choose another time.", time=local.strftime("%Y-%m-%d %H:%M"), zone=zone.key)})
    return as_utc.replace(tzinfo=None)


def utc_to_local_input(when: datetime | None, zone: ZoneInfo) -> str:
    """A stored naive-UTC time as the `datetime-local` input shows it."""
    if when is None:
        return ""
    return when.replace(tzinfo=UTC).astimezone(zone).strftime("%Y-%m-%dT%H:%M")


def schedule(merchant_id: int, campaign_id: int, local_text: str,
             now: datetime | None = None) -> Campaign:
    """Schedule the campaign for a local time in the merchant's time zone."""
    with tenant(merchant_id):
        merchant = db.session.get(Merchant, merchant_id)
        when = local_to_utc(local_text, merchant_zone(merchant))
        if when <= (now or utcnow()):
            raise BuilderError({"scheduled_at": _("Choose a time in the future.")})
        campaign = _editable(merchant_id, campaign_id)
        check_ready(merchant_id, campaign)
        db.session.commit()
        return sending.schedule(campaign_id, when)


def send_now(merchant_id: int, campaign_id: int) -> Campaign:
    """Start sending now, if the campaign is still complete and valid."""
    with tenant(merchant_id):
        campaign = _editable(merchant_id, campaign_id)
        check_ready(merchant_id, campaign)
        db.session.commit()
        return sending.start(campaign_id)


# --- preview and test send ------------------------------------------------------------------


@dataclass
class Preview:
    customer: Customer
    is_sample: bool
    subject: str
    preheader: str
    html: str
    text: str
    wallet_text: str
    # The wallet card's back: (label, value) rows, the campaign's text first.
    wallet_back: list[tuple[str, str]]
    voucher_code: str | None


def _first_recipient(merchant_id: int, campaign: Campaign) -> Customer | None:
    try:
        # An automation's audience is whoever its flow picks on the day: preview
        # it as the shop's first customer.
        rules = (segments.empty_rules() if (campaign.audience or {}).get("type") == "automation"
                 else audience_rules(merchant_id, campaign.audience))
    except BuilderError:
        return None
    first = segments.compile_segment(merchant_id, rules).order_by(Customer.id).limit(1)
    with tenant(merchant_id):
        return db.session.scalar(
            select(Customer).where(Customer.id.in_(first.scalar_subquery())))


def _sample_customer(merchant: Merchant) -> Customer:
    """A stand-in when nobody is in the audience: no name, so the fallbacks show."""
    return Customer(id=0, merchant_id=merchant.id, first_name="", last_name="",
                    locale=merchant.locale or "en", email="")


def render_message(campaign: Campaign, merchant: Merchant, program: Program | None,
                   customer: Customer, card: Card | None,
                   voucher_code: str | None, locale: str | None = None) -> Preview:
    """What `customer` gets from `campaign`, by the sender's own rules and templates.

    Mirrors the rendering half of sending._build_email / _send_wallet (content
    compiled once per language, placeholders filled per recipient, escaped in
    HTML), without touching the outbox or issuing a voucher.
    """
    # `locale` shows the campaign as a customer who reads that language gets it.
    locale = locale or customer.locale or merchant.locale or "en"
    content = rendering.compile_content(campaign, locale, merchant.locale)
    card_url = links.card_url(card) if card is not None else links.absolute("/")
    values = rendering.recipient_values(customer, card, program, voucher_code=voucher_code,
                                        card_url=card_url)
    # Reminder flows (reward ready, voucher expiry, tag-based) go out in the
    # reminder template with its own opt-out, as sending._Emails sends them.
    reminder = campaign.kind in sending.REMINDER_KINDS
    template = "email/reminder_campaign" if reminder else "email/campaign"
    unsubscribe = links.unsubscribe_url(customer, "reminders" if reminder else "all")
    prefs = links.prefs_url(customer)
    with force_locale(content.locale):
        html = render_template(
            f"{template}.html", merchant=merchant, content=content, kind=campaign.kind,
            body=rendering.personalise(content.html_body, values, html=True),
            preheader=rendering.personalise(content.preheader, values),
            prefs_url=prefs, unsubscribe_url=unsubscribe, customer=customer,
        )
        text = render_template(
            f"{template}.txt", merchant=merchant, customer=customer, kind=campaign.kind,
            body=rendering.personalise(content.text_body, values),
            prefs_url=prefs, unsubscribe_url=unsubscribe,
        )
        wallet_text = rendering.single_line(rendering.personalise(content.wallet_text, values))
        # The same labels as wallet.passkit.pass_content's back fields.
        back = [(_("Latest news"), wallet_text or "—")]
        if card is not None:
            back.append((_("Card code"), card.code))
        if program is not None:
            back.append((_("How it works"), _(
                "Collect %(count)d stamps for %(reward)s.",
                count=program.stamps_required, reward=program.reward_text)))
        back.append((_("Your card online"), card_url))
    return Preview(
        customer=customer, is_sample=not customer.id,
        subject=rendering.single_line(rendering.personalise(content.subject, values)),
        preheader=rendering.personalise(content.preheader, values),
        html=html, text=text, wallet_text=wallet_text, wallet_back=back,
        voucher_code=voucher_code,
    )


def preview(merchant_id: int, campaign_id: int, customer_id: int | None = None,
            locale: str | None = None) -> Preview:
    """The campaign as one recipient gets it: `customer_id`, else the audience's first
    member, else a nameless sample; in `locale` instead of the customer's language when
    given. Raises LookupError for ids not the merchant's."""
    with tenant(merchant_id):
        campaign = db.session.scalar(select(Campaign).where(
            Campaign.id == campaign_id, Campaign.merchant_id == merchant_id))
        if campaign is None:
            raise LookupError(f"campaign {campaign_id} not found")
        merchant = db.session.get(Merchant, merchant_id)
        program = db.session.scalar(select(Program).where(Program.merchant_id == merchant_id))
        if customer_id is not None:
            customer = db.session.scalar(select(Customer).where(
                Customer.id == customer_id, Customer.merchant_id == merchant_id))
            if customer is None:
                raise LookupError(f"customer {customer_id} not found")
        else:
            customer = _first_recipient(merchant_id, campaign)
        if customer is None:
            customer, card = _sample_customer(merchant), None
        else:
            card = db.session.scalar(select(Card).where(Card.customer_id == customer.id))
        voucher_code = PREVIEW_VOUCHER_CODE if campaign.voucher_title else None
        return render_message(campaign, merchant, program, customer, card, voucher_code,
                              locale if locale in LANGUAGES else None)


def send_test(merchant_id: int, campaign_id: int, to_address: str,
              customer_id: int | None = None, locale: str | None = None) -> str:
    """Email the preview to `to_address` now, subject marked “[Test]”; return the address.

    Straight over the transport: no outbox row, no voucher, no effect on the
    campaign's results. Raises transport.TransportError if the mail server refuses.
    """
    shown = preview(merchant_id, campaign_id, customer_id, locale)
    with tenant(merchant_id):
        merchant = db.session.get(Merchant, merchant_id)
        message = transport.build_message(
            merchant=merchant, to=to_address,
            subject=rendering.single_line(f"{_('[Test]')} {shown.subject}"),
            text=shown.text, html=shown.html,
        )
        # No transaction stays open across the network round trip.
        db.session.commit()
        with transport.open_connection() as connection:
            connection.send(message)
    return to_address


# --- progress and the list ------------------------------------------------------------------


@dataclass
class Progress:
    status: str
    total: int
    done: int
    counts: dict[str, int]
    skipped: list[tuple[str, int]]
    paused_reason: str | None
    scheduled_at: datetime | None

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if self.status == "sent" else 0
        return int(100 * self.done / self.total)

    @property
    def live(self) -> bool:
        """Whether the page should keep asking: the state can change without the user."""
        return self.status in LIVE_STATES


FINISHED_MESSAGE_STATES = (MSG_SENT, MSG_FAILED, MSG_SKIPPED, MSG_UNKNOWN)


def progress(merchant_id: int, campaign_id: int) -> Progress:
    with tenant(merchant_id):
        campaign = db.session.scalar(select(Campaign).where(
            Campaign.id == campaign_id, Campaign.merchant_id == merchant_id))
        if campaign is None:
            raise LookupError(f"campaign {campaign_id} not found")
        counts = outbox.counts(campaign_id)
    skipped = sorted(((key.split(":", 1)[1], n) for key, n in counts.items()
                      if key.startswith("skipped:")), key=lambda item: -item[1])
    return Progress(
        status=campaign.status, total=counts["total"],
        done=sum(counts[s] for s in FINISHED_MESSAGE_STATES), counts=counts, skipped=skipped,
        paused_reason=campaign.paused_reason, scheduled_at=campaign.scheduled_at,
    )


@dataclass
class CampaignRow:
    campaign: Campaign
    audience: str
    sent: int
    total: int


def list_campaigns(merchant_id: int) -> list[CampaignRow]:
    """The merchant's one-off campaigns, newest first, with sent/total counts."""
    labels = audience_labels(merchant_id)
    with tenant(merchant_id):
        campaigns = list(db.session.scalars(
            select(Campaign).where(Campaign.merchant_id == merchant_id,
                                   Campaign.kind == "oneoff")
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())))
        ids = [c.id for c in campaigns]
        totals: dict[int, list[int]] = {i: [0, 0] for i in ids}
        if ids:
            for campaign_id, status, count in db.session.execute(
                select(Message.campaign_id, Message.status, func.count(Message.id))
                .where(Message.campaign_id.in_(ids))
                .group_by(Message.campaign_id, Message.status)
            ):
                totals[campaign_id][1] += count
                if status == MSG_SENT:
                    totals[campaign_id][0] += count
    return [
        CampaignRow(c, labels.get(audience_key(c.audience), _("(deleted)")),
                    totals[c.id][0], totals[c.id][1])
        for c in campaigns
    ]
