"""Segments: a JSON rule tree, its validation, and its compilation to one SQL query.

The rule tree (version 1) is

    {"version": 1, "match": "all" | "any",
     "groups": [{"match": "all" | "any",
                 "conditions": [{"field": ..., "op": ..., "value": ...}, ...]}, ...]}

Groups nest one level deep: the tree is (c1 AND c2) OR (c3), or any mix of
all/any at both levels. No groups means every customer of the merchant.

Fields, their ops and values (`value` may arrive as a string from a form; the
validated tree has the typed value):

- days_since_last_visit  gt | lt   int days. Days are the merchant's local
  calendar days (visited yesterday evening = 1 day ago). A customer who never
  visited counts as "more than" any number and never as "less than".
- visit_count            gt | lt | eq  int
- total_spent            gt | lt   decimal string, e.g. "25.00"
- stamps_to_reward       lte | eq  int: program.stamps_required - card.stamps
- has_unused_voucher     is        bool; optional "expiring_within_days": int
  (an active, unexpired voucher that expires before the end of local day today+N)
- birthday_within_days   within    int 0..365: the birthday falls on a local
  date from today to today+N inclusive, across New Year. Customers born on
  29 February celebrate on 28 February in years without one.
- birthday_in_month      eq        int 1..12
- joined_within_days     within    int: joined on local day today-N or later
- has_tag / lacks_tag    is        tag id
- consent                granted | not_granted   channel: email | wallet | reminders
  (email also needs the address not to be suppressed after a bounce)
- language               in        list of language codes
- visited_location       is        location id; optional "within_days": int.
  A stamp that was undone is not a visit.

Every compiled query filters on customer.merchant_id itself: Core statements
(INSERT ... SELECT, subqueries) do not pass through the ORM tenant listener.
The conditions compare indexed columns with constants computed here (cut-off
times, month/day ranges) rather than computing per row, so the planner can use
the (merchant_id, column) indexes declared on Customer.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import Select, and_, exists, func, not_, or_, select
from sqlalchemy.orm import aliased

from ..extensions import db
from ..i18n import LANGUAGES
from ..models import (
    CHANNELS,
    CONSENT_GRANTED,
    VISIT_STAMP,
    VOUCHER_ACTIVE,
    Card,
    Customer,
    CustomerTag,
    Location,
    Merchant,
    Program,
    Segment,
    Tag,
    Visit,
    Voucher,
    utcnow,
)
from ..tenancy import tenant

RULES_VERSION = 1
MATCHES = ("all", "any")
MAX_GROUPS = 10
MAX_CONDITIONS = 20  # per group
MAX_DAYS = 3650
MAX_COUNT = 1_000_000
MAX_SPENT = Decimal("9999999999.99")
NAME_MAX = 120


@dataclass(frozen=True)
class FieldSpec:
    """One condition type the builder offers: its ops and what its value is."""

    label: object
    ops: tuple[tuple[str, object], ...]
    # int | decimal | bool | month | tag | location | channel | languages
    kind: str
    minimum: int = 0
    maximum: int = MAX_DAYS
    # Name of the optional extra number (days), if the field has one.
    extra: str | None = None
    extra_label: object = None
    unit: object = None


FIELDS: dict[str, FieldSpec] = {
    "days_since_last_visit": FieldSpec(
        _l("Days since last visit"), (("gt", _l("more than")), ("lt", _l("less than"))),
        "int", unit=_l("days"),
    ),
    "visit_count": FieldSpec(
        _l("Number of visits"),
        (("gt", _l("more than")), ("lt", _l("fewer than")), ("eq", _l("exactly"))),
        "int", maximum=MAX_COUNT,
    ),
    "total_spent": FieldSpec(
        _l("Total spent"), (("gt", _l("more than")), ("lt", _l("less than"))), "decimal"
    ),
    "stamps_to_reward": FieldSpec(
        _l("Stamps to the next reward"), (("lte", _l("at most")), ("eq", _l("exactly"))),
        "int", maximum=100,
    ),
    "has_unused_voucher": FieldSpec(
        _l("Unused voucher"), (("is", _l("is")),), "bool",
        extra="expiring_within_days", extra_label=_l("expiring within (days, optional)"),
    ),
    "birthday_within_days": FieldSpec(
        _l("Birthday within"), (("within", _l("the next")),), "int", maximum=365,
        unit=_l("days"),
    ),
    "birthday_in_month": FieldSpec(_l("Birthday in"), (("eq", _l("is")),), "month"),
    "joined_within_days": FieldSpec(
        _l("Joined within"), (("within", _l("the last")),), "int", unit=_l("days")
    ),
    "has_tag": FieldSpec(_l("Has tag"), (("is", _l("is")),), "tag"),
    "lacks_tag": FieldSpec(_l("Lacks tag"), (("is", _l("is")),), "tag"),
    "consent": FieldSpec(
        _l("Consent"), (("granted", _l("granted for")), ("not_granted", _l("not granted for"))),
        "channel",
    ),
    "language": FieldSpec(_l("Language"), (("in", _l("is one of")),), "languages"),
    "visited_location": FieldSpec(
        _l("Visited location"), (("is", _l("is")),), "location",
        extra="within_days", extra_label=_l("within the last (days, optional)"),
    ),
}

CHANNEL_LABELS = {"email": _l("email"), "wallet": _l("wallet"), "reminders": _l("reminders")}


class SegmentError(ValueError):
    """A rule tree (or a segment's name) that cannot be used.

    `path` names the offending part, e.g. "groups.0.conditions.1.value", so a
    form can show `message` next to that input; `errors` lists every problem
    found as (path, message) pairs, the first of which is `path`/`message`.
    """

    def __init__(self, path: str, message: str, errors: list[tuple[str, str]] | None = None):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
        self.errors = errors or [(path, message)]


# --- validation -----------------------------------------------------------------


@dataclass
class _Problems:
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def validate_rules(rules, merchant_id: int | None = None) -> dict:
    """Return the rule tree normalised with typed values, or raise SegmentError.

    Every problem is collected (SegmentError.errors). With `merchant_id`, tag
    and location ids must also be the merchant's own.
    """
    problems = _Problems()
    result = _validate_tree(rules, problems)
    if not problems.items and merchant_id is not None:
        _check_references(result, merchant_id, problems)
    if problems.items:
        path, message = problems.items[0]
        raise SegmentError(path, message, problems.items)
    return result


def empty_rules() -> dict:
    return {"version": RULES_VERSION, "match": "all", "groups": []}


def _validate_tree(rules, problems: _Problems) -> dict:
    if rules is None:
        return empty_rules()
    if not isinstance(rules, dict):
        problems.add("rules", _("The rules are not in a form stampweb understands."))
        return empty_rules()
    version = rules.get("version", RULES_VERSION)
    if version != RULES_VERSION:
        problems.add("version", _("These rules were made by a newer version of stampweb."))
        return empty_rules()
    match = rules.get("match", "all")
    if match not in MATCHES:
        problems.add("match", _("Choose “all” or “any”."))
    groups = rules.get("groups") or []
    if not isinstance(groups, list):
        problems.add("groups", _("The rules are not in a form stampweb understands."))
        groups = []
    if len(groups) > MAX_GROUPS:
        problems.add("groups", _("At most %(num)d groups.", num=MAX_GROUPS))
    clean_groups = []
    for g, group in enumerate(groups[:MAX_GROUPS]):
        clean_groups.append(_validate_group(group, f"groups.{g}", problems))
    return {"version": RULES_VERSION, "match": match, "groups": clean_groups}


def _validate_group(group, path: str, problems: _Problems) -> dict:
    if not isinstance(group, dict):
        problems.add(path, _("The rules are not in a form stampweb understands."))
        return {"match": "all", "conditions": []}
    match = group.get("match", "all")
    if match not in MATCHES:
        problems.add(f"{path}.match", _("Choose “all” or “any”."))
    conditions = group.get("conditions") or []
    if not isinstance(conditions, list):
        conditions = []
    if not conditions:
        problems.add(path, _("Add a condition to this group or remove the group."))
    if len(conditions) > MAX_CONDITIONS:
        problems.add(path, _("At most %(num)d conditions in a group.", num=MAX_CONDITIONS))
    clean = [
        _validate_condition(condition, f"{path}.conditions.{c}", problems)
        for c, condition in enumerate(conditions[:MAX_CONDITIONS])
    ]
    return {"match": match, "conditions": clean}


def _validate_condition(condition, path: str, problems: _Problems) -> dict:
    if not isinstance(condition, dict):
        problems.add(path, _("The rules are not in a form stampweb understands."))
        return {}
    name = condition.get("field")
    spec = FIELDS.get(name)
    if spec is None:
        problems.add(f"{path}.field", _("Choose what this condition looks at."))
        return {"field": name, "op": condition.get("op"), "value": condition.get("value")}
    op = condition.get("op") or spec.ops[0][0]
    if op not in {key for key, _label in spec.ops}:
        problems.add(f"{path}.op", _("Choose how to compare."))
    value = _validate_value(spec, condition.get("value"), f"{path}.value", problems)
    clean = {"field": name, "op": op, "value": value}
    if spec.extra:
        raw = condition.get(spec.extra)
        if raw not in (None, ""):
            clean[spec.extra] = _int_value(raw, 0, MAX_DAYS, f"{path}.{spec.extra}", problems)
    return clean


def _int_value(raw, minimum: int, maximum: int, path: str, problems: _Problems):
    if isinstance(raw, bool):
        raw = None
    if isinstance(raw, str):
        raw = raw.strip()
        if raw.lstrip("-").isdigit():
            raw = int(raw)
        elif raw == "":
            problems.add(path, _("Enter a number."))
            return None
    if not isinstance(raw, int):
        problems.add(path, _("Enter a whole number."))
        return None
    if raw < minimum or raw > maximum:
        problems.add(path, _("Enter a number from %(min)d to %(max)d.", min=minimum, max=maximum))
        return None
    return raw


def _validate_value(spec: FieldSpec, raw, path: str, problems: _Problems):
    kind = spec.kind
    if kind == "int":
        return _int_value(raw, spec.minimum, spec.maximum, path, problems)
    if kind == "month":
        return _int_value(raw, 1, 12, path, problems)
    if kind in ("tag", "location"):
        if raw in (None, ""):
            problems.add(path, _("Choose a tag.") if kind == "tag" else _("Choose a location."))
            return None
        return _int_value(raw, 1, 2**31 - 1, path, problems)
    if kind == "decimal":
        text = str(raw if raw is not None else "").strip().replace(",", ".")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            problems.add(path, _("Enter an amount, e.g. 25.00."))
            return None
        if not amount.is_finite() or amount < 0 or amount > MAX_SPENT:
            problems.add(path, _("Enter an amount, e.g. 25.00."))
            return None
        return str(amount.quantize(Decimal("0.01")))
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw if raw is not None else "").strip().lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        problems.add(path, _("Choose yes or no."))
        return None
    if kind == "channel":
        if raw not in CHANNELS:
            problems.add(path, _("Choose a channel."))
            return None
        return raw
    if kind == "languages":
        values = [raw] if isinstance(raw, str) else list(raw or [])
        codes = []
        for value in values:
            for code in str(value).replace(";", ",").split(","):
                code = code.strip().lower()
                if code and code not in codes:
                    codes.append(code)
        if not codes:
            problems.add(path, _("Choose at least one language."))
            return None
        unknown = [code for code in codes if code not in LANGUAGES]
        if unknown:
            problems.add(path, _("Unknown language: %(codes)s.", codes=", ".join(unknown)))
            return None
        return codes
    raise AssertionError(f"unknown field kind {kind}")  # pragma: no cover


def _check_references(rules: dict, merchant_id: int, problems: _Problems) -> None:
    wanted: dict[str, dict[int, str]] = {"tag": {}, "location": {}}
    for g, group in enumerate(rules["groups"]):
        for c, condition in enumerate(group["conditions"]):
            kind = FIELDS[condition["field"]].kind
            if kind in wanted:
                wanted[kind][condition["value"]] = f"groups.{g}.conditions.{c}.value"
    with tenant(merchant_id):
        if wanted["tag"]:
            found = set(db.session.scalars(select(Tag.id).where(
                Tag.merchant_id == merchant_id, Tag.id.in_(wanted["tag"]))))
            for ident, path in wanted["tag"].items():
                if ident not in found:
                    problems.add(path, _("That tag does not exist (any more)."))
        if wanted["location"]:
            found = set(db.session.scalars(select(Location.id).where(
                Location.merchant_id == merchant_id, Location.id.in_(wanted["location"]))))
            for ident, path in wanted["location"].items():
                if ident not in found:
                    problems.add(path, _("That location does not exist (any more)."))


def referenced_tag_ids(rules: dict) -> set[int]:
    """Tag ids a (validated) rule tree mentions in has_tag / lacks_tag."""
    return {
        condition["value"]
        for group in rules.get("groups", [])
        for condition in group.get("conditions", [])
        if condition.get("field") in ("has_tag", "lacks_tag")
    }


# --- compilation ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    merchant_id: int
    now: datetime  # naive UTC
    zone: ZoneInfo

    @property
    def today(self) -> date:
        return self.now.replace(tzinfo=UTC).astimezone(self.zone).date()

    def day_start(self, day: date) -> datetime:
        """The naive-UTC instant local `day` begins (DST-aware)."""
        return datetime.combine(day, time.min, tzinfo=self.zone).astimezone(UTC).replace(
            tzinfo=None
        )


def merchant_zone(merchant_id: int) -> ZoneInfo:
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
        raise LookupError(f"no merchant {merchant_id}")
    try:
        return ZoneInfo(merchant.timezone or "UTC")
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def compile_segment(
    merchant_id: int, rules, now: datetime | None = None, *, zone: ZoneInfo | None = None
) -> Select:
    """`SELECT customer.id` for the merchant's customers matching `rules`.

    `now` (naive UTC, default the current time) fixes "today" in the merchant's
    time zone for the day-based rules. Raises SegmentError for invalid rules.
    """
    clean = validate_rules(rules)
    ctx = _Context(merchant_id, now or utcnow(), zone or merchant_zone(merchant_id))
    statement = select(Customer.id).where(Customer.merchant_id == merchant_id)
    condition = _compile_tree(clean, ctx)
    if condition is not None:
        statement = statement.where(condition)
    return statement


def _compile_tree(rules: dict, ctx: _Context):
    groups = [_compile_group(group, ctx) for group in rules["groups"]]
    if not groups:
        return None
    return _combine(rules["match"], groups)


def _compile_group(group: dict, ctx: _Context):
    return _combine(group["match"], [_compile_condition(c, ctx) for c in group["conditions"]])


def _combine(match: str, clauses: list):
    if len(clauses) == 1:
        return clauses[0]
    return and_(*clauses) if match == "all" else or_(*clauses)


def _compile_condition(condition: dict, ctx: _Context):
    compiler = _COMPILERS[condition["field"]]
    return compiler(condition, ctx)


def _compare(column, op: str, value):
    if op == "gt":
        return column > value
    if op == "lt":
        return column < value
    if op == "lte":
        return column <= value
    return column == value


def _days_since_last_visit(condition, ctx):
    n = condition["value"]
    if condition["op"] == "gt":
        # Last visit on local day today-n-1 or earlier, or never.
        cutoff = ctx.day_start(ctx.today - timedelta(days=n))
        return or_(Customer.last_visit_at < cutoff, Customer.last_visit_at.is_(None))
    cutoff = ctx.day_start(ctx.today - timedelta(days=n - 1))
    return Customer.last_visit_at >= cutoff


def _visit_count(condition, ctx):
    return _compare(Customer.visit_count, condition["op"], condition["value"])


def _total_spent(condition, ctx):
    return _compare(Customer.total_spent, condition["op"], Decimal(condition["value"]))


def _stamps_to_reward(condition, ctx):
    remaining = Program.stamps_required - Card.stamps
    return exists(
        select(Card.id)
        .join(Program, Program.id == Card.program_id)
        .where(
            Card.customer_id == Customer.id,
            Card.merchant_id == ctx.merchant_id,
            _compare(remaining, condition["op"], condition["value"]),
        )
    )


def _has_unused_voucher(condition, ctx):
    clauses = [
        Voucher.customer_id == Customer.id,
        Voucher.merchant_id == ctx.merchant_id,
        Voucher.status == VOUCHER_ACTIVE,
        or_(Voucher.expires_at.is_(None), Voucher.expires_at > ctx.now),
    ]
    days = condition.get("expiring_within_days")
    if days is not None:
        clauses.append(Voucher.expires_at < ctx.day_start(ctx.today + timedelta(days=days + 1)))
    found = exists(select(Voucher.id).where(*clauses))
    return found if condition["value"] else not_(found)


def birthday_ranges(today: date, days: int) -> list[tuple[int, int, int]]:
    """(month, first_day, last_day) runs covering local dates today..today+days.

    Wraps over New Year. In a year without 29 February, a window containing
    28 February also takes the customers born on 29 February.
    """
    by_month: dict[int, set[int]] = {}
    for offset in range(min(days, 365) + 1):
        day = today + timedelta(days=offset)
        by_month.setdefault(day.month, set()).add(day.day)
        if day.month == 2 and day.day == 28 and not calendar.isleap(day.year):
            by_month[2].add(29)
    ranges = []
    for month in sorted(by_month):
        run_start = previous = None
        for d in sorted(by_month[month]):
            if run_start is None:
                run_start = previous = d
            elif d == previous + 1:
                previous = d
            else:
                ranges.append((month, run_start, previous))
                run_start = previous = d
        ranges.append((month, run_start, previous))
    return ranges


def _birthday_within_days(condition, ctx):
    clauses = []
    for month, first, last in birthday_ranges(ctx.today, condition["value"]):
        if first == 1 and last >= 29:
            clauses.append(Customer.birthday_month == month)  # the whole month
        else:
            clauses.append(and_(Customer.birthday_month == month,
                                Customer.birthday_day.between(first, last)))
    return and_(Customer.birthday_day.is_not(None), or_(*clauses))


def _birthday_in_month(condition, ctx):
    return Customer.birthday_month == condition["value"]


def _joined_within_days(condition, ctx):
    return Customer.joined_at >= ctx.day_start(ctx.today - timedelta(days=condition["value"]))


def _tagged(tag_id: int, ctx):
    return exists(
        select(CustomerTag.customer_id).where(
            CustomerTag.customer_id == Customer.id,
            CustomerTag.tag_id == tag_id,
            CustomerTag.merchant_id == ctx.merchant_id,
        )
    )


def _has_tag(condition, ctx):
    return _tagged(condition["value"], ctx)


def _lacks_tag(condition, ctx):
    return not_(_tagged(condition["value"], ctx))


def _consent(condition, ctx):
    column = getattr(Customer, f"{condition['value']}_consent")
    granted = column == CONSENT_GRANTED
    if condition["value"] == "email":
        granted = and_(granted, Customer.email_suppressed_at.is_(None))
    return granted if condition["op"] == "granted" else not_(granted)


def _language(condition, ctx):
    return Customer.locale.in_(condition["value"])


def _visited_location(condition, ctx):
    reversal = aliased(Visit)
    clauses = [
        Visit.location_id == condition["value"],
        Visit.customer_id == Customer.id,
        Visit.merchant_id == ctx.merchant_id,
        Visit.kind == VISIT_STAMP,
        ~exists(select(reversal.id).where(reversal.reverses_id == Visit.id)),
    ]
    days = condition.get("within_days")
    if days is not None:
        clauses.append(Visit.created_at >= ctx.day_start(ctx.today - timedelta(days=days)))
    return exists(select(Visit.id).where(*clauses))


_COMPILERS = {
    "days_since_last_visit": _days_since_last_visit,
    "visit_count": _visit_count,
    "total_spent": _total_spent,
    "stamps_to_reward": _stamps_to_reward,
    "has_unused_voucher": _has_unused_voucher,
    "birthday_within_days": _birthday_within_days,
    "birthday_in_month": _birthday_in_month,
    "joined_within_days": _joined_within_days,
    "has_tag": _has_tag,
    "lacks_tag": _lacks_tag,
    "consent": _consent,
    "language": _language,
    "visited_location": _visited_location,
}
assert set(_COMPILERS) == set(FIELDS)


# --- running a segment ---------------------------------------------------------------


def count_audience(merchant_id: int, rules, now: datetime | None = None) -> int:
    """How many of the merchant's customers match; counted by the database."""
    statement = compile_segment(merchant_id, rules, now)
    with tenant(merchant_id):
        return db.session.scalar(select(func.count()).select_from(statement.subquery()))


def sample_audience(
    merchant_id: int, rules, limit: int = 5, now: datetime | None = None
) -> list[Customer]:
    """A few matching customers (most recent members first), to show in the builder."""
    ids = compile_segment(merchant_id, rules, now).order_by(Customer.id.desc()).limit(limit)
    with tenant(merchant_id):
        return list(db.session.scalars(
            select(Customer).where(Customer.id.in_(ids.scalar_subquery()))
            .order_by(Customer.id.desc())
        ))


def iter_audience_ids(
    merchant_id: int,
    rules,
    batch_size: int = 500,
    after_id: int = 0,
    now: datetime | None = None,
) -> Iterator[list[int]]:
    """Yield the matching customer ids in ascending batches, walking by key.

    Each batch is `id > last_id ORDER BY id LIMIT batch_size`, so a caller that
    saves the last id of each batch can resume from it (`after_id`). `now` is
    fixed for the whole walk, so the day-based rules do not shift under it.
    """
    statement = compile_segment(merchant_id, rules, now or utcnow())
    last = after_id
    while True:
        with tenant(merchant_id):
            ids = list(db.session.scalars(
                statement.where(Customer.id > last).order_by(Customer.id).limit(batch_size)
            ))
        if not ids:
            return
        yield ids
        if len(ids) < batch_size:
            return
        last = ids[-1]


# --- saved segments ------------------------------------------------------------------


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise SegmentError("name", _("Give the segment a name."))
    if len(name) > NAME_MAX:
        raise SegmentError("name", _("At most %(num)d characters.", num=NAME_MAX))
    return name


def save_segment(
    merchant_id: int, name: str, rules, segment_id: int | None = None
) -> Segment:
    """Create or update a segment; nothing is saved unless name and rules are valid.

    The caller commits.
    """
    problems: list[tuple[str, str]] = []
    try:
        name = _check_name(name)
    except SegmentError as exc:
        problems.extend(exc.errors)
    try:
        clean = validate_rules(rules, merchant_id)
    except SegmentError as exc:
        problems.extend(exc.errors)
    if problems:
        raise SegmentError(problems[0][0], problems[0][1], problems)
    with tenant(merchant_id):
        if segment_id is None:
            segment = Segment(merchant_id=merchant_id, name=name, rules=clean)
            db.session.add(segment)
        else:
            segment = db.session.scalars(
                select(Segment).where(Segment.id == segment_id,
                                      Segment.merchant_id == merchant_id)
            ).one()
            segment.name = name
            segment.rules = clean
        db.session.flush()
    return segment


def delete_segment(merchant_id: int, segment_id: int) -> None:
    with tenant(merchant_id):
        segment = db.session.scalars(
            select(Segment).where(Segment.id == segment_id, Segment.merchant_id == merchant_id)
        ).one()
        db.session.delete(segment)
        db.session.flush()


def list_segments(merchant_id: int) -> list[Segment]:
    with tenant(merchant_id):
        return list(db.session.scalars(
            select(Segment).where(Segment.merchant_id == merchant_id).order_by(Segment.name)
        ))


__all__ = [
    "FIELDS",
    "SegmentError",
    "compile_segment",
    "count_audience",
    "delete_segment",
    "empty_rules",
    "iter_audience_ids",
    "list_segments",
    "sample_audience",
    "save_segment",
    "validate_rules",
]
