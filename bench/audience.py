"""Benchmark: the live audience count of a 3-rule segment over 1,000,000 customers.

    .venv/bin/python bench/audience.py [--customers 1000000] [--runs 7] [--skip-postgres]
                                       [--explain]

The segment is the one a cafe sends a win-back to: "visited more than 5
times AND last visit more than 30 days ago AND agreed to marketing email".
It is counted with stampweb.campaigns.segments.count_audience, exactly as the
builder's live count does, on

- SQLite: a fresh file in a temporary directory, loaded by one
  INSERT ... SELECT over a recursive CTE;
- PostgreSQL: a private server started with tests/servers.py
  (`PostgresServer`, temp dir, random port), loaded with generate_series.

Both get the application's schema (models' metadata: the same tables and
indexes the migrations build), built after the load, and ANALYZE (VACUUM
ANALYZE on PostgreSQL, as autovacuum does after a bulk load). The data is deterministic and
spread like a real shop's: 20% never visited, a long tail of regulars, a
quarter with email consent. One warm-up count, then the median of --runs
counts. Everything is removed afterwards. The last line printed is JSON with
`sqlite_ms` and `postgres_ms` (and the count, which must agree). Target:
<= 200 ms each. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

NOW = datetime(2026, 3, 10, 12, 0, 0)
RULES = {"version": 1, "match": "all", "groups": [{"match": "all", "conditions": [
    {"field": "visit_count", "op": "gt", "value": 5},
    {"field": "days_since_last_visit", "op": "gt", "value": 30},
    {"field": "consent", "op": "granted", "value": "email"},
]}]}

# Deterministic spread: h1..h3 are independent-looking hashes of the row number
# (multiplicative hashing), shared by both engines' SQL.
COLUMNS = """(merchant_id, first_name, last_name, search_name, locale, email_consent,
              wallet_consent, reminders_consent, visit_count, last_visit_at, total_spent,
              joined_at, updated_at, birthday_month, birthday_day)"""


def _select_rows(n: str, days_ago) -> str:
    h1, h2, h3 = (f"(({n} * {k}) % 1000)" for k in (2654435761, 40503, 2246822519))
    visits = (f"CASE WHEN {h1} < 200 THEN 0 WHEN {h1} < 600 THEN 1 + {h1} % 2 "
              f"WHEN {h1} < 850 THEN 3 + {h1} % 5 ELSE 8 + {h1} % 40 END")
    return f"""
        SELECT :merchant_id, 'C' || {n}, 'Bench', 'c' || {n} || ' bench', 'en',
               CASE WHEN {h3} < 250 THEN 'granted' ELSE 'none' END, 'none', 'none',
               {visits},
               CASE WHEN {h1} < 200 THEN NULL ELSE {days_ago(f"{h2} % 365")} END,
               ({h2} % 200) * 2.5,
               {days_ago(f"({h2} + {h3}) % 900")},
               :now,
               CASE WHEN {h3} % 5 < 2 THEN 1 + {h2} % 12 END,
               CASE WHEN {h3} % 5 < 2 THEN 1 + {h1} % 28 END
    """


def _sqlite_load(db, text, merchant_id: int, count: int) -> None:
    # SQLite stores DateTime as ISO text: compute it with datetime() in SQL.
    def days_ago(expr):
        return f"datetime(:now, '-' || ({expr}) || ' days')"

    db.session.execute(text(f"""
        WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :count)
        INSERT INTO customer {COLUMNS}
        {_select_rows("n", days_ago)} FROM seq
    """), {"merchant_id": merchant_id, "count": count, "now": NOW.isoformat(" ")})


def _postgres_load(db, text, merchant_id: int, count: int) -> None:
    def days_ago(expr):
        return f"CAST(:now AS timestamp) - make_interval(days => CAST({expr} AS int))"

    db.session.execute(text(f"""
        INSERT INTO customer {COLUMNS}
        {_select_rows("n::bigint", days_ago)}
        FROM generate_series(1, :count) AS n
    """), {"merchant_id": merchant_id, "count": count, "now": NOW})


def explain(db, merchant_id: int) -> None:
    """Print the plan of the count query (--explain)."""
    from sqlalchemy import func, select

    from stampweb.campaigns.segments import compile_segment

    count = select(func.count()).select_from(compile_segment(merchant_id, RULES, NOW).subquery())
    compiled = count.compile(dialect=db.engine.dialect)
    prefix = ("EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite"
              else "EXPLAIN (ANALYZE, BUFFERS) ")
    params = compiled.params
    if compiled.positiontup:  # SQLite: positional, datetimes as ISO text
        params = tuple(v.isoformat(" ") if isinstance(v, datetime) else v
                       for v in (params[k] for k in compiled.positiontup))
    with db.engine.connect() as conn:
        for row in conn.exec_driver_sql(prefix + compiled.string, params):
            print("    " + " | ".join(str(v) for v in row))


def measure(url: str, instance: Path, customers: int, runs: int, loader,
            show_plan: bool = False) -> tuple[float, int]:
    """Build the schema, load `customers` rows, ANALYZE, and time the count."""
    os.environ["STAMPWEB_INSTANCE_PATH"] = str(instance)
    os.environ.setdefault("SECRET_KEY", "bench-secret-key")
    from sqlalchemy import text

    from stampweb import create_app
    from stampweb.campaigns.segments import count_audience
    from stampweb.extensions import db
    from stampweb.models import Customer, Merchant

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "REDIS_URL": "fakeredis://bench",
                      "INSTANCE_PATH": str(instance)})
    with app.app_context():
        db.create_all()
        merchant = Merchant(slug="bench", name="Bench Cafe")
        other = Merchant(slug="other", name="Other Cafe")
        db.session.add_all([merchant, other])
        db.session.flush()
        started = time.perf_counter()
        # Loading into bare tables and indexing afterwards is several times faster.
        indexes = list(Customer.__table__.indexes)
        for index in indexes:
            index.drop(bind=db.session.connection())
        loader(db, text, other.id, 1_000)
        loader(db, text, merchant.id, customers)
        for index in indexes:
            index.create(bind=db.session.connection())
        db.session.commit()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # PostgreSQL: VACUUM too, as autovacuum would after a bulk load; it sets
            # the visibility map that lets the count read the index alone.
            conn.exec_driver_sql("ANALYZE" if db.engine.dialect.name == "sqlite"
                                 else "VACUUM ANALYZE")
        print(f"  loaded {customers:,} customers in {time.perf_counter() - started:.1f} s")
        if show_plan:
            explain(db, merchant.id)
        count = count_audience(merchant.id, RULES, NOW)  # warm-up
        timings = []
        for _ in range(runs):
            db.session.remove()
            started = time.perf_counter()
            again = count_audience(merchant.id, RULES, NOW)
            timings.append((time.perf_counter() - started) * 1000)
            assert again == count
        print(f"  count {count:,}; runs (ms): {', '.join(f'{t:.1f}' for t in timings)}")
        db.session.remove()
        db.engine.dispose()
    return statistics.median(timings), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="stampweb-bench-audience-"))
    result: dict = {"customers": args.customers, "runs": args.runs}
    try:
        print("SQLite")
        sqlite_ms, sqlite_count = measure(
            f"sqlite:///{workdir / 'bench.db'}", workdir / "sqlite", args.customers,
            args.runs, _sqlite_load, args.explain)
        result.update(sqlite_ms=round(sqlite_ms, 1), count=sqlite_count)
        if args.skip_postgres:
            result["postgres_ms"] = None
        else:
            from tests.servers import PostgresServer

            print("PostgreSQL")
            with PostgresServer() as server:
                url = server.create_database("bench_audience")
                postgres_ms, postgres_count = measure(
                    url, workdir / "postgres", args.customers, args.runs, _postgres_load,
                    args.explain)
            result["postgres_ms"] = round(postgres_ms, 1)
            if postgres_count != sqlite_count:
                result["count_mismatch"] = postgres_count
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["target_ms"] = 200
    print(json.dumps(result))


if __name__ == "__main__":
    main()
