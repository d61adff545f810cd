"""The outbox recorder writes a sent message together with the next one going in
flight — one statement per message on PostgreSQL — and a crash in between leaves
the sent one in flight, which the reconciler calls unknown and never resends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import DBAPIError

from stampweb.campaigns import outbox, sending
from stampweb.extensions import db
from stampweb.messaging import eligibility
from stampweb.models import Customer, utcnow
from stampweb.models.campaigns import Message, MessageEvent
from stampweb.tenancy import tenant

from .factories import gen_merchant
from .test_campaign_sending import make_campaign, opted_in


@pytest.fixture(params=["sqlite", "postgresql"])
def any_app(request):
    """The same promise on the embedded default and on production's database."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_app")
    return request.getfixturevalue("app")


def claimed(count: int):
    """A merchant, and `count` of its campaign's rows claimed by this 'job'."""
    merchant = gen_merchant()
    opted_in(merchant, count)
    campaign_id = make_campaign(merchant.id)
    with tenant(merchant.id):
        sending.start(campaign_id)
        sending.fanout(campaign_id)
        ids = list(db.session.scalars(select(Message.id).order_by(Message.id)))
        rows = outbox.claim(ids)
    # As send_batch does: the claimed rows stay loaded across the commits that follow.
    db.session().expire_on_commit = False
    return merchant, rows


def state(merchant_id: int, message_id: int) -> tuple[str, bool, list[str]]:
    """(status, in flight?, the message log's statuses) as the database has them now."""
    with tenant(merchant_id):
        row = db.session.execute(
            select(Message.status, Message.in_flight_since).where(Message.id == message_id)
        ).one()
        log = list(db.session.scalars(
            select(MessageEvent.status).where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.id)))
        db.session.commit()
    return row.status, row.in_flight_since is not None, log


def test_sent_is_written_with_the_next_message_going_in_flight(any_app):
    with any_app.app_context():
        merchant, (first, second) = claimed(2)
        with tenant(merchant.id), outbox.Recorder() as recorder:
            may_receive = eligibility.may_receive("email", merchant)
            customers = dict(db.session.execute(select(Customer.id, Customer.email)).all())
            db.session.commit()
            assert recorder.in_flight(first, "<a@x>", customers[first.customer_id],
                                      may_receive=may_receive)
            recorder.note_sent(first)
            # Accepted by the server, not yet written: in flight, as a crash would leave it.
            assert state(merchant.id, first.id) == ("sending", True, [])

            statements = []

            def count(_connection, _cursor, statement, *_args):
                if not statement.startswith("BEGIN"):
                    statements.append(statement)

            event.listen(db.engine, "before_cursor_execute", count)
            try:
                assert recorder.in_flight(second, "<b@x>", customers[second.customer_id],
                                          may_receive=may_receive)
            finally:
                event.remove(db.engine, "before_cursor_execute", count)
            # PostgreSQL: one statement (CTEs); SQLite: three in one transaction.
            assert len(statements) == (1 if any_app.config["SQLALCHEMY_DATABASE_URI"]
                                       .startswith("postgresql") else 3)
            assert state(merchant.id, first.id) == ("sent", False, ["sent"])
            assert first.status == "sent" and first.in_flight_since is None
            assert state(merchant.id, second.id) == ("sending", True, [])
            recorder.note_sent(second)
        # Closing the recorder writes the last one.
        assert state(merchant.id, second.id) == ("sent", False, ["sent"])


def test_a_refused_in_flight_still_writes_the_sent_before_it(any_app):
    """The next customer unsubscribed a moment ago: that message does not go in
    flight, and the one accepted before it is recorded sent all the same."""
    with any_app.app_context():
        merchant, (first, second) = claimed(2)
        with tenant(merchant.id):
            customers = {c.id: c for c in db.session.scalars(select(Customer))}
            emails = {cid: c.email for cid, c in customers.items()}
            customers[second.customer_id].email_consent = "withdrawn"
            db.session.commit()
            with outbox.Recorder() as recorder:
                may_receive = eligibility.may_receive("email", merchant)
                assert recorder.in_flight(first, "<a@x>", emails[first.customer_id],
                                          may_receive=may_receive)
                recorder.note_sent(first)
                assert not recorder.in_flight(second, "<b@x>", emails[second.customer_id],
                                              may_receive=may_receive)
                assert state(merchant.id, first.id) == ("sent", False, ["sent"])
                assert state(merchant.id, second.id) == ("sending", False, [])
                recorder.skipped(second, "no_consent")
        assert state(merchant.id, second.id) == ("skipped", False, ["skipped"])


def test_a_crash_before_the_next_statement_leaves_the_sent_message_unknown(any_app):
    """Killed after the server accepted a message and before the statement that
    would have written it: the row is still in flight, so the reconciler makes it
    `unknown` (never resent) and gives the untouched row back."""
    with any_app.app_context():
        merchant, (first, second) = claimed(2)
        with tenant(merchant.id):
            email = db.session.scalar(select(Customer.email)
                                      .where(Customer.id == first.customer_id))
            db.session.commit()
            recorder = outbox.Recorder()
            assert recorder.in_flight(first, "<a@x>", email)
            recorder.note_sent(first)
            recorder.connection.close()  # the process dies: nothing more is written
            report = outbox.expire_leases(utcnow() + outbox.LEASE + timedelta(seconds=1))
        assert report == {"unknown": 1, "released": 1}
        # It keeps the time it went on the wire.
        assert state(merchant.id, first.id) == ("unknown", True, ["unknown"])
        assert state(merchant.id, second.id) == ("pending", False, ["pending"])


def test_on_postgresql_a_message_is_one_prepared_statement_with_sqlalchemys_errors(pg_app):
    """The recorder runs its statement on the driver's cursor, prepared once: each
    further message is one execution of the same statement, and a database error
    still comes out as SQLAlchemy's, with the row left as it was."""
    with pg_app.app_context():
        merchant, (first, second, third) = claimed(3)
        with tenant(merchant.id):
            emails = dict(db.session.execute(select(Customer.id, Customer.email)).all())
            db.session.commit()
            with outbox.Recorder() as recorder:
                may_receive = eligibility.may_receive("email", merchant)
                assert recorder.in_flight(first, "<a@x>", emails[first.customer_id],
                                          may_receive=may_receive)
                recorder.note_sent(first)
                assert recorder.in_flight(second, "<b@x>", emails[second.customer_id],
                                          may_receive=may_receive)
                recorder.note_sent(second)
                raw = recorder.connection.connection.dbapi_connection
                prepared = raw.execute(
                    "SELECT count(*) FROM pg_prepared_statements"
                    " WHERE statement LIKE '%s_changed%'").fetchone()[0]
                assert prepared == 1
                # to_address is VARCHAR(254): PostgreSQL refuses the statement.
                with pytest.raises(DBAPIError):
                    recorder.in_flight(third, "<c@x>", "x" * 300 + "@example.com",
                                       may_receive=may_receive)
                assert third.in_flight_since is None
        # Second's `sent` was in the refused statement: closing writes it on its own.
        assert state(merchant.id, first.id) == ("sent", False, ["sent"])
        assert state(merchant.id, second.id) == ("sent", False, ["sent"])
        assert state(merchant.id, third.id) == ("sending", False, [])


def test_in_flight_soon_answers_as_in_flight_and_close_waits_for_it(any_app):
    """in_flight_soon() gives in_flight()'s answer when asked (on PostgreSQL the
    statement ran meanwhile on a helper thread), asking twice gives it again, and
    a recorder closed without asking still finishes the statement first."""
    with any_app.app_context():
        merchant, (first, second, third) = claimed(3)
        with tenant(merchant.id):
            emails = dict(db.session.execute(select(Customer.id, Customer.email)).all())
            db.session.commit()
            may_receive = eligibility.may_receive("email", merchant)
            with outbox.Recorder() as recorder:
                went = recorder.in_flight_soon(first, "<a@x>", emails[first.customer_id],
                                               may_receive=may_receive)
                assert went() and went()
                assert first.in_flight_since is not None
                recorder.note_sent(first)
                refused = recorder.in_flight_soon(second, "<b@x>", "not-theirs@example.com",
                                                  may_receive=may_receive)
                assert not refused()
                recorder.skipped(second, "no_consent")
                recorder.in_flight_soon(third, "<c@x>", emails[third.customer_id],
                                        may_receive=may_receive)
        assert state(merchant.id, first.id) == ("sent", False, ["sent"])
        assert state(merchant.id, second.id) == ("skipped", False, ["skipped"])
        assert state(merchant.id, third.id) == ("sending", True, [])
