"""Who a campaign goes to: everyone, a saved segment, a tag, inline rules, or listed ids.

`page()` walks the audience by customer id (id > after ORDER BY id LIMIT n),
the keyset the fan-out checkpoints, so a restart resumes without OFFSET.
"""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import Customer


class AudienceError(ValueError):
    pass


def page(merchant_id: int, audience: dict, *, after_id: int, limit: int) -> list[int]:
    kind = (audience or {}).get("type", "all")
    if kind == "all":
        query = select(Customer.id).where(Customer.merchant_id == merchant_id)
    elif kind == "customers":
        ids = sorted(int(i) for i in audience.get("ids", []))
        query = select(Customer.id).where(Customer.merchant_id == merchant_id,
                                          Customer.id.in_(ids))
    elif kind in ("segment", "rules", "tag"):
        query = _segment_query(merchant_id, audience)
    else:
        raise AudienceError(f"unknown audience type {kind!r}")
    subquery = query.subquery()
    return list(
        db.session.scalars(
            select(subquery.c[0]).where(subquery.c[0] > after_id)
            .order_by(subquery.c[0]).limit(limit)
        )
    )


def _segment_query(merchant_id: int, audience: dict):
    from . import segments  # rules → SQL (stampweb/campaigns/segments.py)

    kind = audience["type"]
    if kind == "tag":
        rules = {"match": "all", "groups": [{"match": "all", "conditions": [
            {"field": "has_tag", "op": "is", "value": int(audience["tag_id"])}]}]}
    elif kind == "segment":
        from ..models.segments import Segment

        segment = db.session.get(Segment, int(audience["segment_id"]))
        if segment is None or segment.merchant_id != merchant_id:
            raise AudienceError("the segment no longer exists")
        rules = segment.rules
    else:
        rules = audience["rules"]
    return segments.compile_segment(merchant_id, rules)
