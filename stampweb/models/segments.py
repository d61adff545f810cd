"""Segments (saved audience rules) and tags on customers.

A segment's `rules` is the JSON rule tree that stampweb.campaigns.segments
validates and compiles to one SQL query. A tag is either manual (staff put it
on a customer) or rule-driven (its members are recomputed from a rule tree).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ..tenancy import TenantScoped
from .base import utcnow
from .loyalty import Customer

TAG_MANUAL = "manual"
TAG_RULE = "rule"
TAG_KINDS = (TAG_MANUAL, TAG_RULE)

# Who put a tag on a customer: recomputing a rule only ever removes its own rows.
TAG_SOURCE_RULE = "rule"
TAG_SOURCE_MANUAL = "manual"


class Segment(TenantScoped, db.Model):
    """A saved audience: a rule tree over the merchant's customers."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    rules: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_segment_merchant_name", "merchant_id", "name"),)


class Tag(TenantScoped, db.Model):
    """A label on customers: set by hand (manual) or by a rule recomputed hourly."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))
    kind: Mapped[str] = mapped_column(String(10), default=TAG_MANUAL)
    # For rule tags: the rule tree (segment schema), or a saved segment's rules.
    rule: Mapped[dict | None] = mapped_column(JSON)
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segment.id", ondelete="SET NULL"))
    description: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_computed_at: Mapped[datetime | None]

    segment: Mapped[Segment | None] = relationship()

    __table_args__ = (UniqueConstraint("merchant_id", "name"),)

    @property
    def is_rule(self) -> bool:
        return self.kind == TAG_RULE


class CustomerTag(TenantScoped, db.Model):
    """One tag on one customer."""

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customer.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(10), default=TAG_SOURCE_MANUAL)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tag: Mapped[Tag] = relationship()

    __table_args__ = (
        # Tag member lists, member counts and the has_tag rule (index-only scans).
        Index("ix_customer_tag_merchant_tag_customer", "merchant_id", "tag_id", "customer_id"),
    )


# Marketing-email audiences ("agreed to email" AND visit count / recency, the
# shape of win-back and regulars campaigns): the count reads this index alone,
# never the customer rows. Declared here, beside the segment rules it serves.
Index(
    "ix_customer_merchant_email_audience",
    Customer.merchant_id,
    Customer.email_consent,
    Customer.visit_count,
    Customer.last_visit_at,
    Customer.email_suppressed_at,
)
