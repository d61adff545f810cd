"""The common segment rules run on PostgreSQL through their (merchant_id, column) index.

Set-up: 20,000 customers for the merchant under test plus 30,000 for three
other merchants, with realistic, selective data (most customers did not visit
this week, few have 20+ visits, 40% gave a birthday, 10% agreed to email),
then ANALYZE. The planner is left to choose on its own: sequential scans are
NOT disabled. The test EXPLAINs the audience count the builder runs and looks
for an index scan (Index Scan, Index Only Scan or Bitmap Index Scan) on the
index that matches the rule.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select, text

from stampweb.campaigns.segments import compile_segment
from stampweb.extensions import db

from .factories import gen_merchant

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 12, 0, 0)
INDEX_NODES = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def _load_customers(merchant_id: int, count: int) -> None:
    """Bulk-insert customers with spread-out counters, visits, birthdays and consent."""
    db.session.execute(text("""
        INSERT INTO customer (merchant_id, first_name, last_name, search_name, locale,
                              email_consent, wallet_consent, reminders_consent,
                              visit_count, last_visit_at, total_spent, joined_at, updated_at,
                              birthday_month, birthday_day)
        SELECT :merchant_id, 'C' || n, 'Test', 'c' || n || ' test', 'en',
               CASE WHEN n % 10 = 0 THEN 'granted' ELSE 'none' END, 'none', 'none',
               CASE WHEN n % 33 = 0 THEN 20 + n % 30 ELSE n % 12 END,
               CASE WHEN n % 7 = 0 THEN NULL
                    ELSE CAST(:now AS timestamp) - make_interval(days => 3 + n % 400) END,
               (n % 500) * 1.5,
               CAST(:now AS timestamp) - make_interval(days => n % 900),
               CAST(:now AS timestamp),
               CASE WHEN n % 5 < 2 THEN 1 + n % 12 END,
               CASE WHEN n % 5 < 2 THEN 1 + n % 28 END
        FROM generate_series(1, :count) AS n
    """), {"merchant_id": merchant_id, "count": count, "now": NOW})
    # A recent-visit minority: the "visited this week" rule is selective.
    db.session.execute(text("""
        UPDATE customer SET last_visit_at = CAST(:now AS timestamp) - interval '1 day'
        WHERE merchant_id = :merchant_id AND id % 50 = 0
    """), {"merchant_id": merchant_id, "now": NOW})


@pytest.fixture
def big_shop(pg_app):
    with pg_app.app_context():
        merchant = gen_merchant()
        for _ in range(3):
            _load_customers(gen_merchant().id, 10_000)
        _load_customers(merchant.id, 20_000)
        db.session.commit()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE customer")
        yield merchant.id


def _index_scans(plan: dict) -> set[str]:
    found = set()
    if plan.get("Node Type") in INDEX_NODES:
        found.add(plan["Index Name"])
    for child in plan.get("Plans", []):
        found |= _index_scans(child)
    return found


def _plan_indexes(merchant_id: int, rules: dict) -> set[str]:
    """Indexes scanned by the count query the builder runs for `rules`."""
    count = select(func.count()).select_from(
        compile_segment(merchant_id, rules, NOW).subquery()
    )
    compiled = count.compile(dialect=db.engine.dialect)
    with db.engine.connect() as conn:
        [(plan,)] = conn.exec_driver_sql(
            "EXPLAIN (FORMAT JSON) " + compiled.string, compiled.params
        ).all()
    return _index_scans(plan[0]["Plan"])


def _one(field: str, op: str, value) -> dict:
    return {"groups": [{"conditions": [{"field": field, "op": op, "value": value}]}]}


# Email consent has two fitting indexes: (merchant_id, email_consent) and the
# covering email-audience index that starts with the same two columns.
EMAIL_INDEXES = {"ix_customer_merchant_email_consent", "ix_customer_merchant_email_audience"}


@pytest.mark.parametrize(
    ("rules", "indexes"),
    [
        (_one("days_since_last_visit", "lt", 7), {"ix_customer_merchant_last_visit"}),
        (_one("visit_count", "gt", 20), {"ix_customer_merchant_visits"}),
        (_one("birthday_in_month", "eq", 3), {"ix_customer_merchant_birthday"}),
        (_one("consent", "granted", "email"), EMAIL_INDEXES),
    ],
    ids=["days_since_last_visit", "visit_count", "birthday_in_month", "email_consent"],
)
def test_common_rule_uses_its_index(pg_app, big_shop, rules, indexes):
    """The planner, left free, reaches the matching customers through the rule's index."""
    with pg_app.app_context():
        assert indexes & _plan_indexes(big_shop, rules)


def test_three_rules_together_still_use_an_index(pg_app, big_shop):
    """A lapsed-regulars-with-consent segment starts from one of its indexes."""
    rules = {"match": "all", "groups": [{"match": "all", "conditions": [
        {"field": "visit_count", "op": "gt", "value": 20},
        {"field": "days_since_last_visit", "op": "gt", "value": 30},
        {"field": "consent", "op": "granted", "value": "email"},
    ]}]}
    with pg_app.app_context():
        assert _plan_indexes(big_shop, rules) & {
            "ix_customer_merchant_visits", "ix_customer_merchant_last_visit", *EMAIL_INDEXES}
