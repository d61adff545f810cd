"""What campaigns achieved, and the merchant's dashboard numbers.

Every number here is one SQL aggregate: no Python loop walks the visit or
outbox tables, so a merchant with a long history gets the dashboard as fast as
a new one.

Attribution ("came back"): a customer came back for a campaign when they had a
stamp visit (not reversed) within the campaign's `attribution_days` after the
send time of one of its messages to them, AND that message was the latest
message they had received before the visit. A visit after two campaigns
counts for the more recent one only, so the campaigns' "came back" numbers
never add up to more visits than happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask_babel import lazy_gettext as _l
from sqlalchemy import DateTime, and_, case, distinct, exists, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from ..extensions import db
from ..models import VISIT_STAMP, VOUCHER_REDEEMED, Customer, Merchant, Visit, Voucher, utcnow
from ..models.campaigns import (
    MSG_FAILED,
    MSG_PENDING,
    MSG_SENDING,
    MSG_SENT,
    MSG_SKIPPED,
    MSG_STATES,
    MSG_UNKNOWN,
    SKIP_CANCELLED,
    SKIP_CAPPED,
    SKIP_NO_ADDRESS,
    SKIP_NO_CONSENT,
    SKIP_NO_DEVICE,
    SKIP_SUPPRESSED,
    SKIP_WALLET_NOT_CONFIGURED,
    Campaign,
    Message,
    MessageEvent,
)
from ..tenancy import tenant

# The MessageEvent status a quiet-hours hold writes (outbox.Recorder.defer).
EVENT_DEFERRED = "deferred"

# Skip reasons in the order the results show them.
SKIP_REASONS = (
    SKIP_NO_CONSENT, SKIP_CAPPED, SKIP_NO_ADDRESS, SKIP_SUPPRESSED, SKIP_CANCELLED,
    SKIP_WALLET_NOT_CONFIGURED, SKIP_NO_DEVICE,
)

# What merchants read for each outbox status and skip reason.
STATUS_LABELS = {
    MSG_PENDING: _l("Waiting"),
    MSG_SENDING: _l("Sending"),
    MSG_SENT: _l("Sent"),
    MSG_FAILED: _l("Failed"),
    MSG_SKIPPED: _l("Skipped"),
    MSG_UNKNOWN: _l("Maybe delivered"),
    EVENT_DEFERRED: _l("Held for quiet hours"),
    "retry": _l("Will retry"),
}
SKIP_REASON_LABELS = {
    SKIP_NO_CONSENT: _l("No consent"),
    SKIP_CAPPED: _l("Frequency cap reached"),
    SKIP_NO_ADDRESS: _l("No address"),
    SKIP_SUPPRESSED: _l("Address bounced or complained"),
    SKIP_CANCELLED: _l("Campaign cancelled"),
    SKIP_WALLET_NOT_CONFIGURED: _l("Wallet not set up"),
    SKIP_NO_DEVICE: _l("No wallet pass on a phone"),
}


def status_label(status: str | None) -> str:
    return str(STATUS_LABELS.get(status or "", status or ""))


def skip_reason_label(reason: str | None) -> str:
    return str(SKIP_REASON_LABELS.get(reason or "", reason or ""))


# Dashboard activity bands, in days since the last visit.
ACTIVE_DAYS = 30
AT_RISK_DAYS = 90
WEEKS_SHOWN = 12


# --- portable date arithmetic -----------------------------------------------------


class plus_days(FunctionElement):
    """`column + n days` on both engines (SQLite has no interval type).

    SQLite keeps SQLAlchemy datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text;
    strftime('%f') gives milliseconds, so '000' pads the result back to the
    same width and the text comparison with other datetimes stays exact.
    """

    type = DateTime()
    inherit_cache = True
    name = "plus_days"


@compiles(plus_days)
def _plus_days_default(element, compiler, **kw):
    column, days = list(element.clauses)
    column_sql, days_sql = compiler.process(column, **kw), compiler.process(days, **kw)
    return f"({column_sql} + make_interval(days => {days_sql}))"


@compiles(plus_days, "sqlite")
def _plus_days_sqlite(element, compiler, **kw):
    column, days = list(element.clauses)
    return (
        f"(strftime('%Y-%m-%d %H:%M:%f', {compiler.process(column, **kw)}, "
        f"'+' || {compiler.process(days, **kw)} || ' days') || '000')"
    )


# --- one campaign -------------------------------------------------------------------


@dataclass
class CampaignResults:
    """What one campaign did. Row counts are outbox rows (one per customer and channel);
    `reached`, `came_back` and `quiet_hours` count customers."""

    campaign_id: int
    name: str
    status: str
    attribution_days: int
    targeted: int
    by_status: dict[str, int]
    skipped_by_reason: dict[str, int]
    # Customers whose message was held back for quiet hours at least once.
    quiet_hours: int
    vouchers_issued: int
    vouchers_redeemed: int
    reached: int
    came_back: int
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    # True while visits can still be attributed (the window after the last send is open).
    counting: bool
    extra: dict = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return self.by_status.get(MSG_SENT, 0)

    @property
    def failed(self) -> int:
        return self.by_status.get(MSG_FAILED, 0)

    @property
    def skipped(self) -> int:
        return self.by_status.get(MSG_SKIPPED, 0)

    @property
    def unknown(self) -> int:
        return self.by_status.get(MSG_UNKNOWN, 0)

    @property
    def waiting(self) -> int:
        """Rows not sent yet (pending or being sent)."""
        return self.by_status.get(MSG_PENDING, 0) + self.by_status.get(MSG_SENDING, 0)

    @property
    def conversion_rate(self) -> float | None:
        """Share of reached customers who came back; None before anyone was reached."""
        return self.came_back / self.reached if self.reached else None

    @property
    def counting_until(self) -> datetime | None:
        """When the last message's attribution window closes."""
        if self.last_sent_at is None:
            return None
        return self.last_sent_at + timedelta(days=self.attribution_days)

    @property
    def redemption_rate(self) -> float | None:
        return self.vouchers_redeemed / self.vouchers_issued if self.vouchers_issued else None


def _not_reversed(visit) -> ColumnElement[bool]:
    reversal = aliased(Visit)
    return ~exists().where(reversal.reverses_id == visit.id)


def came_back_query(merchant_id: int, campaign_ids, attribution_days_of):
    """Customers who came back, per campaign: SELECT campaign_id, count(distinct customer).

    `campaign_ids` is a list of ids (or a scalar subquery) and
    `attribution_days_of` a SQL expression for the campaign's window, so one
    query answers for several campaigns (the dashboard's list).
    """
    visit = aliased(Visit)
    message = aliased(Message)
    later = aliased(Message)
    # A message from another campaign that reached the customer after this
    # one and before the visit takes the credit (ix_message_customer_sent).
    newer_message = exists().where(
        later.merchant_id == merchant_id,
        later.customer_id == visit.customer_id,
        later.status == MSG_SENT,
        later.campaign_id != message.campaign_id,
        later.sent_at > message.sent_at,
        later.sent_at <= visit.created_at,
    )
    return (
        select(message.campaign_id, func.count(distinct(visit.customer_id)))
        .join(visit, and_(visit.customer_id == message.customer_id,
                          visit.merchant_id == merchant_id))
        .join(Campaign, Campaign.id == message.campaign_id)
        .where(
            message.merchant_id == merchant_id,
            message.campaign_id.in_(campaign_ids),
            message.status == MSG_SENT,
            message.sent_at.is_not(None),
            visit.kind == VISIT_STAMP,
            visit.created_at > message.sent_at,
            visit.created_at < plus_days(message.sent_at, attribution_days_of),
            _not_reversed(visit),
            ~newer_message,
        )
        .group_by(message.campaign_id)
    )


def campaign_results(
    merchant_id: int, campaign_id: int, now: datetime | None = None
) -> CampaignResults:
    """The campaign's outcomes: targeted, sent, failed, skipped by reason, quiet-hours
    holds, vouchers issued and redeemed, customers reached and brought back.

    Raises LookupError for a campaign that is not this merchant's.
    """
    now = now or utcnow()
    with tenant(merchant_id):
        campaign = db.session.scalar(select(Campaign).where(Campaign.id == campaign_id))
        if campaign is None:
            raise LookupError(f"campaign {campaign_id} not found")
        rows = db.session.execute(
            select(Message.status, Message.skip_reason, func.count(Message.id))
            .where(Message.campaign_id == campaign_id)
            .group_by(Message.status, Message.skip_reason)
        ).all()
        by_status = {state: 0 for state in MSG_STATES}
        skipped: dict[str, int] = {}
        for status, reason, count in rows:
            by_status[status] = by_status.get(status, 0) + count
            if status == MSG_SKIPPED:
                key = reason or "other"
                skipped[key] = skipped.get(key, 0) + count
        ordered = {r: skipped.pop(r) for r in SKIP_REASONS if r in skipped}
        ordered.update(sorted(skipped.items()))

        quiet_hours = db.session.scalar(
            select(func.count(distinct(Message.customer_id)))
            .where(
                Message.campaign_id == campaign_id,
                exists().where(MessageEvent.message_id == Message.id,
                               MessageEvent.status == EVENT_DEFERRED),
            )
        ) or 0

        # The campaign's vouchers are the ones its outbox rows point at; this
        # avoids JSON paths into Voucher.origin, which differ between engines.
        campaign_vouchers = (
            select(Message.voucher_id)
            .where(Message.campaign_id == campaign_id, Message.voucher_id.is_not(None))
            .scalar_subquery()
        )
        issued, redeemed = db.session.execute(
            select(
                func.count(Voucher.id),
                func.count(case((Voucher.status == VOUCHER_REDEEMED, Voucher.id))),
            ).where(Voucher.id.in_(campaign_vouchers))
        ).one()

        reached, first_sent, last_sent = db.session.execute(
            select(
                func.count(distinct(Message.customer_id)),
                func.min(Message.sent_at),
                func.max(Message.sent_at),
            ).where(Message.campaign_id == campaign_id, Message.status == MSG_SENT)
        ).one()

        came_back_rows = db.session.execute(
            came_back_query(merchant_id, [campaign_id], literal(campaign.attribution_days))
        ).all()
        came_back = came_back_rows[0][1] if came_back_rows else 0

    return CampaignResults(
        campaign_id=campaign.id,
        name=campaign.name,
        status=campaign.status,
        attribution_days=campaign.attribution_days,
        targeted=sum(by_status.values()),
        by_status=by_status,
        skipped_by_reason=ordered,
        quiet_hours=quiet_hours,
        vouchers_issued=issued or 0,
        vouchers_redeemed=redeemed or 0,
        reached=reached or 0,
        came_back=came_back,
        first_sent_at=first_sent,
        last_sent_at=last_sent,
        counting=last_sent is not None
        and last_sent + timedelta(days=campaign.attribution_days) > now,
    )


# --- the dashboard ------------------------------------------------------------------


@dataclass
class WeekCount:
    starts_on: date  # the local Monday
    visits: int


@dataclass
class CampaignSummary:
    campaign_id: int
    name: str
    status: str
    started_at: datetime | None
    # Customers with at least one message sent.
    reached: int
    came_back: int
    attribution_days: int

    @property
    def conversion_rate(self) -> float | None:
        return self.came_back / self.reached if self.reached else None


@dataclass
class Dashboard:
    members: int
    # Last visit within ACTIVE_DAYS; between ACTIVE_DAYS and AT_RISK_DAYS ago;
    # longer ago than AT_RISK_DAYS; never visited.
    active: int
    at_risk: int
    lapsed: int
    never_visited: int
    weeks: list[WeekCount]
    campaigns: list[CampaignSummary]

    @property
    def visits_last_week(self) -> int:
        return self.weeks[-1].visits if self.weeks else 0


def _local_monday(now: datetime, zone: ZoneInfo) -> date:
    today = now.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone).date()
    return today - timedelta(days=today.weekday())


def _utc_start_of(day: date, zone: ZoneInfo) -> datetime:
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    return local.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


def member_activity(merchant_id: int, now: datetime | None = None) -> dict[str, int]:
    """Members and how recently they visited, in one pass over the customer table."""
    now = now or utcnow()
    active_since = now - timedelta(days=ACTIVE_DAYS)
    risk_since = now - timedelta(days=AT_RISK_DAYS)
    last = Customer.last_visit_at
    with tenant(merchant_id):
        row = db.session.execute(
            select(
                func.count(Customer.id),
                func.count(case((last >= active_since, Customer.id))),
                func.count(case((and_(last < active_since, last >= risk_since), Customer.id))),
                func.count(case((last < risk_since, Customer.id))),
                func.count(case((last.is_(None), Customer.id))),
            ).where(Customer.merchant_id == merchant_id)
        ).one()
    members, active, at_risk, lapsed, never = (value or 0 for value in row)
    return {"members": members, "active": active, "at_risk": at_risk, "lapsed": lapsed,
            "never_visited": never}


def visits_per_week(
    merchant_id: int, weeks: int = WEEKS_SHOWN, now: datetime | None = None
) -> list[WeekCount]:
    """Stamp visits (not reversed) per local Monday-to-Sunday week, oldest first.

    Week boundaries are the merchant's local midnights turned into UTC here,
    so daylight-saving changes land on the right side; SQL only buckets.
    """
    now = now or utcnow()
    with tenant(merchant_id):
        zone = ZoneInfo(db.session.get(Merchant, merchant_id).timezone)
        this_monday = _local_monday(now, zone)
        mondays = [this_monday - timedelta(weeks=weeks - 1 - i) for i in range(weeks)]
        starts = [_utc_start_of(day, zone) for day in mondays]
        # Newest boundary first: the first matching WHEN is the visit's week.
        bucket = case(
            *[(Visit.created_at >= start, index)
              for index, start in reversed(list(enumerate(starts)))],
        )
        # Bucketed in a subquery and grouped outside: PostgreSQL would not see
        # a CASE repeated in GROUP BY (with fresh bind parameters) as the same.
        visits = (
            select(bucket.label("week"))
            .where(
                Visit.merchant_id == merchant_id,
                Visit.kind == VISIT_STAMP,
                Visit.created_at >= starts[0],
                Visit.created_at <= now,
                _not_reversed(Visit),
            )
            .subquery()
        )
        rows = db.session.execute(
            select(visits.c.week, func.count()).group_by(visits.c.week)
        ).all()
    counts = {index: count for index, count in rows if index is not None}
    return [WeekCount(day, counts.get(i, 0)) for i, day in enumerate(mondays)]


def recent_campaigns(merchant_id: int, limit: int = 5) -> list[CampaignSummary]:
    """The latest started campaigns with messages sent and customers brought back."""
    with tenant(merchant_id):
        campaigns = list(
            db.session.scalars(
                select(Campaign)
                .where(Campaign.started_at.is_not(None))
                .order_by(Campaign.started_at.desc(), Campaign.id.desc())
                .limit(limit)
            )
        )
        ids = [c.id for c in campaigns]
        if not ids:
            return []
        reached = dict(
            db.session.execute(
                select(Message.campaign_id, func.count(distinct(Message.customer_id)))
                .where(Message.campaign_id.in_(ids), Message.status == MSG_SENT)
                .group_by(Message.campaign_id)
            ).all()
        )
        came_back = dict(
            db.session.execute(
                came_back_query(merchant_id, ids, Campaign.attribution_days)
            ).all()
        )
    return [
        CampaignSummary(
            campaign_id=c.id, name=c.name, status=c.status, started_at=c.started_at,
            reached=reached.get(c.id, 0), came_back=came_back.get(c.id, 0),
            attribution_days=c.attribution_days,
        )
        for c in campaigns
    ]


def dashboard(merchant_id: int, now: datetime | None = None) -> Dashboard:
    """Everything the merchant's home page shows."""
    now = now or utcnow()
    activity = member_activity(merchant_id, now)
    return Dashboard(
        **activity,
        weeks=visits_per_week(merchant_id, now=now),
        campaigns=recent_campaigns(merchant_id),
    )
