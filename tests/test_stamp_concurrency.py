"""Two staff phones stamping one card at the same moment give one ledger row.

Each thread has its own app context, hence its own session and database
connection, and both are released together by a barrier, so the second
request really arrives while the first is inside its transaction. Run on the
SQLite unit app and on a real PostgreSQL server.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from sqlalchemy import func, select

from stampweb.database import one_writer
from stampweb.extensions import db
from stampweb.loyalty import stamping
from stampweb.loyalty.stamping import StampRefused
from stampweb.models import Card, Visit
from stampweb.tenancy import tenant

from .factories import card_of, gen_customer, gen_merchant, gen_user

ENGINES = [
    pytest.param("app", id="sqlite"),
    pytest.param("pg_app", id="postgresql", marks=pytest.mark.integration),
]


def _setup(application):
    with application.app_context():
        merchant = gen_merchant()
        staff = gen_user(merchant, "staff")
        card = card_of(gen_customer(merchant))
        return merchant.id, staff.id, card.id


def _race(application, merchant_id, card_id, staff_id, keys, rounds=1):
    """Stamp the card from len(keys) threads at once; return results and refusals."""
    barrier = threading.Barrier(len(keys))
    outcomes: list = []
    lock = threading.Lock()

    def tap(key):
        with application.app_context():
            barrier.wait(timeout=10)
            try:
                outcome = stamping.record_stamps(
                    merchant_id, card_id, staff_user_id=staff_id, request_key=key,
                    device="phone",
                )
            except StampRefused as exc:
                outcome = exc
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome = exc
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=tap, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def _ledger(application, merchant_id, card_id):
    with application.app_context(), tenant(merchant_id):
        rows = db.session.scalar(select(func.count(Visit.id)).filter_by(card_id=card_id))
        stamps = db.session.scalar(select(Card.stamps).filter_by(id=card_id))
        return rows, stamps


@pytest.mark.parametrize("engine", ENGINES)
def test_two_simultaneous_stamps_within_the_cooldown_write_one_row(request, engine):
    """Two different taps at the same moment: one stamp, one cooldown refusal."""
    application = request.getfixturevalue(engine)
    merchant_id, staff_id, card_id = _setup(application)
    outcomes = _race(application, merchant_id, card_id, staff_id,
                     ["phone-a-key-0001", "phone-b-key-0002"])
    stamped = [o for o in outcomes if isinstance(o, stamping.StampResult)]
    refused = [o for o in outcomes if isinstance(o, StampRefused)]
    assert len(stamped) == 1 and len(refused) == 1, outcomes
    assert refused[0].reason_code == "cooldown"
    assert _ledger(application, merchant_id, card_id) == (1, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_same_form_posted_twice_at_once_writes_one_row(request, engine):
    """A double submit with one request key: both get the same visit, one row exists."""
    application = request.getfixturevalue(engine)
    merchant_id, staff_id, card_id = _setup(application)
    outcomes = _race(application, merchant_id, card_id, staff_id,
                     ["same-form-key-01", "same-form-key-01"])
    assert all(isinstance(o, stamping.StampResult) for o in outcomes), outcomes
    assert len({o.visit_id for o in outcomes}) == 1
    assert sorted(o.replayed for o in outcomes) == [False, True]
    assert _ledger(application, merchant_id, card_id) == (1, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_same_form_posted_twice_at_once_without_cooldown_writes_one_row(request, engine):
    """With the cooldown off, the unique request key alone keeps it to one row."""
    application = request.getfixturevalue(engine)
    merchant_id, staff_id, card_id = _setup(application)
    with application.app_context(), tenant(merchant_id):
        db.session.execute(
            db.text("UPDATE program SET stamp_cooldown_minutes = 0 WHERE merchant_id = :m"),
            {"m": merchant_id},
        )
        db.session.commit()
    outcomes = _race(application, merchant_id, card_id, staff_id,
                     ["same-form-key-02"] * 3)
    assert all(isinstance(o, stamping.StampResult) for o in outcomes), outcomes
    assert len({o.visit_id for o in outcomes}) == 1
    assert _ledger(application, merchant_id, card_id) == (1, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_many_phones_at_once_still_write_one_row(request, engine):
    """Eight simultaneous taps on one card: exactly one ledger row."""
    application = request.getfixturevalue(engine)
    merchant_id, staff_id, card_id = _setup(application)
    outcomes = _race(application, merchant_id, card_id, staff_id,
                     [f"phone-{n}-key-000{n}" for n in range(8)])
    assert sum(isinstance(o, stamping.StampResult) for o in outcomes) == 1, outcomes
    assert sum(isinstance(o, StampRefused) for o in outcomes) == 7, outcomes
    assert _ledger(application, merchant_id, card_id) == (1, 1)


# Exits 3 when another process holds the lock file, 0 when it could take it.
_FLOCK_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"""


def test_one_sqlite_writer_also_keeps_other_processes_waiting(app):
    """gunicorn workers are processes: while one is in a stamp transaction, another waits."""
    with app.app_context():
        lock_file = db.engine.url.database + "-writer.lock"
        with one_writer():
            while_held = subprocess.run([sys.executable, "-c", _FLOCK_PROBE, lock_file])
        after = subprocess.run([sys.executable, "-c", _FLOCK_PROBE, lock_file])
    assert (while_held.returncode, after.returncode) == (3, 0)
