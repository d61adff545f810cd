"""Tenant scoping: one merchant never sees another's rows.

Every model that holds a merchant's data inherits `TenantScoped`. A
`do_orm_execute` listener adds `merchant_id = <current tenant>` to every ORM
SELECT, UPDATE and DELETE on such models, and raises `TenantNotSet` when no
tenant has been chosen: scoping fails closed, so a forgotten filter is an error
in the test suite rather than a leak in production.

The tenant lives in the SQLAlchemy session's `info`, and Flask-SQLAlchemy gives
each app context (request, RQ job, CLI command) its own session, so the tenant
never outlives the unit of work that set it.

Code that legitimately works across merchants (login by email, the cron
fan-out, public pages that look a merchant up by slug) says so explicitly with
`unscoped()`.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

from flask import abort
from sqlalchemy import ForeignKey, event
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column, with_loader_criteria

from .extensions import db

_TENANT_KEY = "stampweb_merchant_id"
_UNSCOPED_KEY = "stampweb_unscoped"


class TenantNotSet(RuntimeError):
    """An ORM query touched tenant data before a merchant was chosen."""


class TenantScoped:
    """Mixin for models whose rows belong to one merchant (column `merchant_id`)."""

    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchant.id", ondelete="CASCADE"))


def set_tenant(merchant_id: int | None) -> None:
    db.session.info[_TENANT_KEY] = merchant_id


def current_tenant() -> int | None:
    return db.session.info.get(_TENANT_KEY)


def require_tenant() -> int:
    merchant_id = current_tenant()
    if merchant_id is None:
        raise TenantNotSet("no merchant is set for this unit of work")
    return merchant_id


@contextmanager
def unscoped():
    """Run queries across all merchants. Use only where that is the point."""
    info = db.session.info
    previous = info.get(_UNSCOPED_KEY, 0)
    info[_UNSCOPED_KEY] = previous + 1
    try:
        yield
    finally:
        info[_UNSCOPED_KEY] = previous


@contextmanager
def tenant(merchant_id: int):
    """Temporarily act for one merchant (jobs and CLI commands)."""
    info = db.session.info
    previous = info.get(_TENANT_KEY)
    info[_TENANT_KEY] = merchant_id
    try:
        yield
    finally:
        info[_TENANT_KEY] = previous


def get_or_404(model, ident, **filters):
    """Load one row of the current merchant's data by primary key, or answer 404.

    The listener already limits the query to the current merchant, so another
    merchant's id is indistinguishable from one that does not exist.
    """
    require_tenant()
    row = db.session.execute(
        db.select(model).filter_by(id=ident, **filters)
    ).scalar_one_or_none()
    if row is None:
        abort(404)
    return row


def first_or_404(statement):
    row = db.session.execute(statement).scalars().first()
    if row is None:
        abort(404)
    return row


def _tenant_models_in(state: ORMExecuteState) -> bool:
    for mapper in state.all_mappers:
        if issubclass(mapper.class_, TenantScoped):
            return True
    return False


@event.listens_for(Session, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> None:
    if state.is_column_load:
        # Refreshing a column of an object already loaded under the scope.
        return
    if not (state.is_select or state.is_update or state.is_delete):
        return
    info = state.session.info
    if info.get(_UNSCOPED_KEY):
        return
    if not _tenant_models_in(state):
        return
    merchant_id = info.get(_TENANT_KEY)
    if merchant_id is None:
        raise TenantNotSet(
            "query on tenant data with no merchant set; "
            "use tenancy.tenant(...) or tenancy.unscoped()"
        )
    state.statement = state.statement.options(_tenant_criteria(merchant_id))


@functools.lru_cache(maxsize=1024)
def _tenant_criteria(merchant_id: int):
    # Built once per merchant and process: making the option analyses the
    # lambda, which cost more than the rest of this listener on every query.
    return with_loader_criteria(
        TenantScoped,
        lambda cls: cls.merchant_id == merchant_id,
        include_aliases=True,
    )
