"""The migrations build the same schema as the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from stampweb import create_app
from stampweb.extensions import db

from .conftest import unit_config, upgrade_to_head


def schema_diff(app) -> list:
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        return compare_metadata(context, db.metadata)


def test_sqlite_upgrade_to_head_matches_models(tmp_path):
    app = create_app(unit_config(tmp_path))
    upgrade_to_head(app)
    assert schema_diff(app) == []
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
    assert {"merchant", "user", "program", "location", "customer", "consent_event",
            "card", "visit", "voucher", "audit_log"} <= tables


@pytest.mark.integration
def test_postgres_upgrade_to_head_matches_models(pg_app):
    assert schema_diff(pg_app) == []


@pytest.mark.integration
def test_postgres_staff_search_and_segment_indexes_exist(pg_app):
    with pg_app.app_context():
        names = {ix["name"] for ix in inspect(db.engine).get_indexes("customer")}
    assert {"ix_customer_merchant_name", "ix_customer_merchant_last_visit",
            "ix_customer_merchant_birthday", "ix_customer_merchant_email_consent"} <= names
