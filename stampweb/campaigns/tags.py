"""Tags on customers: manual tags, and rule tags recomputed from a segment rule tree.

Recomputing a rule tag is a set difference done by the database inside one
transaction per tag: INSERT ... SELECT the members the rule has and the tag
lacks, DELETE the rule-given rows whose customer the rule no longer has. Rows
put on by hand (source "manual") are never removed by a recompute, and a
second recompute with nothing changed adds 0 and removes 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from flask_babel import gettext as _
from sqlalchemy import Select, delete, exists, func, insert, literal, select
from sqlalchemy.exc import IntegrityError

from ..database import begin_write
from ..extensions import db
from ..models import Customer, CustomerTag, Segment, Tag, utcnow
from ..models.segments import (
    TAG_KINDS,
    TAG_MANUAL,
    TAG_RULE,
    TAG_SOURCE_MANUAL,
    TAG_SOURCE_RULE,
)
from ..tenancy import tenant, unscoped
from .segments import SegmentError, compile_segment, referenced_tag_ids, validate_rules

NAME_MAX = 60
DESCRIPTION_MAX = 300


class TagError(SegmentError):
    """A tag request that cannot be done; `path` names the form input to blame."""


@dataclass(frozen=True)
class TagUpdate:
    """What one recompute of one rule tag changed."""

    merchant_id: int
    tag_id: int
    name: str
    added: int
    removed: int


# --- defining tags -----------------------------------------------------------------


def _clean_name(merchant_id: int, name: str, tag_id: int | None = None) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise TagError("name", _("Give the tag a name."))
    if len(name) > NAME_MAX:
        raise TagError("name", _("At most %(num)d characters.", num=NAME_MAX))
    clash = select(Tag.id).where(
        Tag.merchant_id == merchant_id, func.lower(Tag.name) == name.lower()
    )
    if tag_id is not None:
        clash = clash.where(Tag.id != tag_id)
    with tenant(merchant_id):
        if db.session.scalar(clash) is not None:
            raise TagError("name", _("There is already a tag with this name."))
    return name


def create_tag(
    merchant_id: int,
    name: str,
    kind: str = TAG_MANUAL,
    *,
    rule: dict | None = None,
    segment_id: int | None = None,
    description: str = "",
) -> Tag:
    """Define a tag. A rule tag needs `rule` (a segment rule tree) or `segment_id`.

    Raises SegmentError (every problem in `.errors`, by form path). The caller commits.
    """
    if kind not in TAG_KINDS:
        raise TagError("kind", _("Choose manual or rule."))
    description = (description or "").strip()[:DESCRIPTION_MAX]
    clean_rule = None
    problems: list[tuple[str, str]] = []
    try:
        name = _clean_name(merchant_id, name)
    except TagError as exc:
        problems.extend(exc.errors)
    if kind == TAG_RULE:
        if segment_id is not None:
            try:
                _segment(merchant_id, segment_id)
            except TagError as exc:
                problems.extend(exc.errors)
        else:
            try:
                clean_rule = validate_rules(rule, merchant_id)
            except SegmentError as exc:
                problems.extend(exc.errors)
            else:
                if not clean_rule["groups"]:
                    problems.append(("groups", _("Add at least one condition.")))
    if problems:
        raise SegmentError(problems[0][0], problems[0][1], problems)
    tag = Tag(merchant_id=merchant_id, name=name, kind=kind, rule=clean_rule,
              segment_id=segment_id if kind == TAG_RULE else None, description=description)
    with tenant(merchant_id):
        db.session.add(tag)
        db.session.flush()
    return tag


def update_tag_rule(merchant_id: int, tag_id: int, name: str, rule: dict,
                    description: str = "") -> Tag:
    """Change a rule tag's name and rule. Members change at the next recompute."""
    tag = get_tag(merchant_id, tag_id)
    problems: list[tuple[str, str]] = []
    try:
        name = _clean_name(merchant_id, name, tag_id)
    except TagError as exc:
        problems.extend(exc.errors)
    try:
        clean = validate_rules(rule, merchant_id)
    except SegmentError as exc:
        problems.extend(exc.errors)
    else:
        if tag_id in referenced_tag_ids(clean):
            problems.append(("groups", _("A tag's rule cannot depend on the tag itself.")))
        elif not clean["groups"]:
            problems.append(("groups", _("Add at least one condition.")))
    if problems:
        raise SegmentError(problems[0][0], problems[0][1], problems)
    with tenant(merchant_id):
        tag.name = name
        tag.rule = clean
        tag.segment_id = None
        tag.description = (description or "").strip()[:DESCRIPTION_MAX]
        db.session.flush()
    return tag


def delete_tag(merchant_id: int, tag_id: int) -> None:
    tag = get_tag(merchant_id, tag_id)
    with tenant(merchant_id):
        db.session.execute(delete(CustomerTag).where(
            CustomerTag.merchant_id == merchant_id, CustomerTag.tag_id == tag.id))
        db.session.delete(tag)
        db.session.flush()


def get_tag(merchant_id: int, tag_id: int) -> Tag:
    with tenant(merchant_id):
        tag = db.session.scalar(
            select(Tag).where(Tag.id == tag_id, Tag.merchant_id == merchant_id)
        )
    if tag is None:
        raise LookupError(f"no tag {tag_id} for merchant {merchant_id}")
    return tag


def _segment(merchant_id: int, segment_id: int) -> Segment:
    with tenant(merchant_id):
        segment = db.session.scalar(
            select(Segment).where(Segment.id == segment_id, Segment.merchant_id == merchant_id)
        )
    if segment is None:
        raise TagError("segment_id", _("That segment does not exist."))
    return segment


def list_tags(merchant_id: int) -> list[tuple[Tag, int]]:
    """The merchant's tags with their member counts, by name."""
    members = (
        select(CustomerTag.tag_id, func.count().label("members"))
        .where(CustomerTag.merchant_id == merchant_id)
        .group_by(CustomerTag.tag_id)
        .subquery()
    )
    with tenant(merchant_id):
        rows = db.session.execute(
            select(Tag, func.coalesce(members.c.members, 0))
            .outerjoin(members, members.c.tag_id == Tag.id)
            .where(Tag.merchant_id == merchant_id)
            .order_by(func.lower(Tag.name))
        ).all()
    return [(tag, count) for tag, count in rows]


def manual_tags(merchant_id: int) -> list[Tag]:
    with tenant(merchant_id):
        return list(db.session.scalars(
            select(Tag).where(Tag.merchant_id == merchant_id, Tag.kind == TAG_MANUAL)
            .order_by(func.lower(Tag.name))
        ))


def rule_of(tag: Tag) -> dict | None:
    """The rule tree a rule tag uses: its own, or its segment's."""
    if tag.kind != TAG_RULE:
        return None
    if tag.segment_id is not None:
        segment = _segment(tag.merchant_id, tag.segment_id)
        return segment.rules
    return tag.rule


# --- customers and their tags ------------------------------------------------------------


def tags_of_customer(merchant_id: int, customer_id: int) -> list[Tag]:
    with tenant(merchant_id):
        return list(db.session.scalars(
            select(Tag).join(CustomerTag, CustomerTag.tag_id == Tag.id)
            .where(CustomerTag.customer_id == customer_id,
                   CustomerTag.merchant_id == merchant_id)
            .order_by(func.lower(Tag.name))
        ))


def tags_by_customer(merchant_id: int, customer_ids: Iterable[int]) -> dict[int, list[Tag]]:
    """Tags of many customers in one query (for a customer list page)."""
    ids = list(customer_ids)
    result: dict[int, list[Tag]] = {customer_id: [] for customer_id in ids}
    if not ids:
        return result
    with tenant(merchant_id):
        rows = db.session.execute(
            select(CustomerTag.customer_id, Tag).join(Tag, Tag.id == CustomerTag.tag_id)
            .where(CustomerTag.merchant_id == merchant_id, CustomerTag.customer_id.in_(ids))
            .order_by(func.lower(Tag.name))
        ).all()
    for customer_id, tag in rows:
        result[customer_id].append(tag)
    return result


def where_has_tags(query: Select, merchant_id: int, tag_ids: Iterable[int]) -> Select:
    """Narrow a SELECT over Customer to customers carrying every tag in `tag_ids`."""
    for tag_id in tag_ids:
        query = query.where(exists(select(CustomerTag.customer_id).where(
            CustomerTag.customer_id == Customer.id,
            CustomerTag.tag_id == tag_id,
            CustomerTag.merchant_id == merchant_id,
        )))
    return query


def tag_members(merchant_id: int, tag_id: int, *, after: int = 0,
                limit: int = 50) -> list[Customer]:
    """A page of a tag's members, by customer id (keyset: pass the last id as `after`)."""
    with tenant(merchant_id):
        return list(db.session.scalars(
            where_has_tags(select(Customer), merchant_id, [tag_id])
            .where(Customer.merchant_id == merchant_id, Customer.id > after)
            .order_by(Customer.id).limit(limit)
        ))


def _customer_exists(merchant_id: int, customer_id: int) -> bool:
    with tenant(merchant_id):
        return db.session.scalar(select(Customer.id).where(
            Customer.id == customer_id, Customer.merchant_id == merchant_id)) is not None


def add_manual_tag(
    merchant_id: int,
    customer_id: int,
    *,
    tag_id: int | None = None,
    name: str | None = None,
) -> Tag:
    """Put a manual tag on a customer: an existing one by id, or by name (created if new).

    Adding a tag the customer already has changes nothing. Rule tags cannot be
    set by hand: their rule decides. The caller commits.
    """
    if not _customer_exists(merchant_id, customer_id):
        raise LookupError(f"no customer {customer_id} for merchant {merchant_id}")
    if tag_id is not None:
        try:
            tag = get_tag(merchant_id, tag_id)
        except LookupError as exc:
            raise TagError("tag_id", _("That tag does not exist.")) from exc
    else:
        cleaned = " ".join((name or "").split())
        with tenant(merchant_id):
            tag = db.session.scalar(select(Tag).where(
                Tag.merchant_id == merchant_id, func.lower(Tag.name) == cleaned.lower()))
        if tag is None:
            tag = create_tag(merchant_id, cleaned, TAG_MANUAL)
    if tag.kind != TAG_MANUAL:
        raise TagError("name", _("“%(name)s” is set by its rule, not by hand.", name=tag.name))
    with tenant(merchant_id):
        present = db.session.get(CustomerTag, (customer_id, tag.id))
        if present is None:
            db.session.add(CustomerTag(merchant_id=merchant_id, customer_id=customer_id,
                                       tag_id=tag.id, source=TAG_SOURCE_MANUAL))
            db.session.flush()
    return tag


def remove_manual_tag(merchant_id: int, customer_id: int, tag_id: int) -> bool:
    """Take a manual tag off a customer. Returns whether it was there. The caller commits."""
    with tenant(merchant_id):
        result = db.session.execute(delete(CustomerTag).where(
            CustomerTag.merchant_id == merchant_id,
            CustomerTag.customer_id == customer_id,
            CustomerTag.tag_id == tag_id,
            CustomerTag.source == TAG_SOURCE_MANUAL,
        ))
        db.session.flush()
    return result.rowcount > 0


# --- recomputing rule tags ---------------------------------------------------------------


def recompute_tag(merchant_id: int, tag_id: int, now: datetime | None = None) -> TagUpdate:
    """Bring one rule tag's members in line with its rule, in one transaction; commits.

    The tag row is locked first (FOR UPDATE on PostgreSQL, the write lock on
    SQLite), so the hourly job and `flask tags update` running at once
    serialise instead of inserting the same rows twice.
    """
    now = now or utcnow()
    db.session.commit()
    begin_write()
    try:
        with tenant(merchant_id):
            tag = db.session.scalar(
                select(Tag).where(Tag.id == tag_id, Tag.merchant_id == merchant_id)
                .with_for_update()
            )
            if tag is None or tag.kind != TAG_RULE:
                raise LookupError(f"no rule tag {tag_id} for merchant {merchant_id}")
            rule = rule_of(tag)
            members = compile_segment(merchant_id, rule, now)
            # Core statements on the table: compile_segment filters on merchant_id
            # itself, and the tenant listener does not see INSERT ... SELECT.
            member_ids = members.subquery()
            table = CustomerTag.__table__
            added = db.session.execute(
                insert(table).from_select(
                    ["merchant_id", "customer_id", "tag_id", "source", "created_at"],
                    select(
                        literal(merchant_id), member_ids.c.id, literal(tag.id),
                        literal(TAG_SOURCE_RULE), literal(now),
                    ).where(~exists(select(CustomerTag.customer_id).where(
                        CustomerTag.customer_id == member_ids.c.id,
                        CustomerTag.tag_id == tag.id,
                    ))),
                ),
                # SQLAlchemy keeps an INSERT's rowcount only when asked to.
                execution_options={"preserve_rowcount": True},
            ).rowcount
            removed = db.session.execute(
                delete(table).where(
                    table.c.merchant_id == merchant_id,
                    table.c.tag_id == tag.id,
                    table.c.source == TAG_SOURCE_RULE,
                    ~exists(members.where(Customer.id == table.c.customer_id)),
                )
            ).rowcount
            tag.last_computed_at = now
            update = TagUpdate(merchant_id, tag.id, tag.name, added, removed)
        db.session.commit()
    except (IntegrityError, SegmentError, LookupError):
        db.session.rollback()
        raise
    return update


def update_tags(
    merchant_id: int | None = None, now: datetime | None = None
) -> list[TagUpdate]:
    """Recompute every rule tag (of one merchant, or of all), tag by tag.

    Tags are recomputed in id order, so a rule that mentions an older tag sees
    that tag's fresh members. A tag whose rule has gone bad (e.g. it names a
    deleted tag) is skipped; the others still update.
    """
    now = now or utcnow()
    query = select(Tag.merchant_id, Tag.id).where(Tag.kind == TAG_RULE).order_by(
        Tag.merchant_id, Tag.id
    )
    if merchant_id is not None:
        query = query.where(Tag.merchant_id == merchant_id)
    with unscoped():
        pairs = db.session.execute(query).all()
    db.session.commit()
    updates = []
    for tag_merchant_id, tag_id in pairs:
        try:
            updates.append(recompute_tag(tag_merchant_id, tag_id, now))
        except (SegmentError, LookupError):
            continue
    return updates
