"""Migration 0002 builds the wallet tables exactly as the models declare them."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from stampweb import create_app
from stampweb.extensions import db

from .conftest import unit_config, upgrade_to_head
from .test_migrations import schema_diff

WALLET_TABLES = {"wallet_pass", "wallet_registration", "wallet_google_notification",
                 "wallet_settings"}


def _wallet_diff(app) -> list:
    """Differences between the migrated database and the models, for wallet tables only."""

    def concerns_wallet(item) -> bool:
        if isinstance(item, list):
            return any(concerns_wallet(i) for i in item)
        return any(getattr(part, "name", None) in WALLET_TABLES
                   or getattr(getattr(part, "table", None), "name", None) in WALLET_TABLES
                   or part in WALLET_TABLES for part in item)

    return [item for item in schema_diff(app) if concerns_wallet(item)]


def test_sqlite_wallet_tables_match_models(tmp_path):
    app = create_app(unit_config(tmp_path))
    upgrade_to_head(app)
    with app.app_context():
        assert WALLET_TABLES <= set(inspect(db.engine).get_table_names())
    assert _wallet_diff(app) == []
    with app.app_context():
        db.engine.dispose()


@pytest.mark.integration
def test_postgres_wallet_tables_match_models(pg_app):
    with pg_app.app_context():
        assert WALLET_TABLES <= set(inspect(db.engine).get_table_names())
    assert _wallet_diff(pg_app) == []
