"""The outbox: materialise an audience into message rows, claim them, record outcomes.

The database is the source of truth; RQ carries only lists of row ids. Rows
are claimed atomically (FOR UPDATE SKIP LOCKED on PostgreSQL, the write lock
on SQLite) under a lease, so a duplicated or re-run job finds nothing to do,
and a row whose worker died while it was `sending` becomes `unknown` instead
of being sent a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import DateTime, String, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm.attributes import set_committed_value

from ..database import among, begin_write, is_postgres
from ..extensions import db
from ..models import Customer, utcnow
from ..models.campaigns import (
    CAMPAIGN_SENDING,
    MSG_FAILED,
    MSG_PENDING,
    MSG_SENDING,
    MSG_SENT,
    MSG_SKIPPED,
    MSG_UNKNOWN,
    Campaign,
    Message,
    MessageEvent,
)

LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 4
# Back-off after the 1st, 2nd, 3rd temporary failure.
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30))


table = Message.__table__
events = MessageEvent.__table__


def materialise(
    merchant_id: int,
    campaign_id: int,
    customer_ids: Iterable[int],
    channels: Iterable[str],
    occurrence: str = "",
    not_before: datetime | None = None,
) -> int:
    """Insert outbox rows, ignoring ones that exist; return how many are new.

    The unique (campaign, customer, channel, occurrence) key is what makes a
    second fan-out or a second automation run add nothing.
    """
    return len(materialise_ids(merchant_id, campaign_id, customer_ids, channels,
                               occurrence=occurrence, not_before=not_before))


def materialise_ids(
    merchant_id: int,
    campaign_id: int,
    customer_ids: Iterable[int],
    channels: Iterable[str],
    occurrence: str = "",
    not_before: datetime | None = None,
    queued_at: datetime | None = None,
) -> list[int]:
    """materialise(), returning the ids of the new rows in id order.

    `queued_at` marks them queued in the same INSERT, for a caller that
    enqueues them right after its commit (the fan-out): no second statement,
    and no query for what is due.
    """
    now = utcnow()
    rows = [
        {
            "merchant_id": merchant_id,
            "campaign_id": campaign_id,
            "customer_id": customer_id,
            "channel": channel,
            "occurrence": occurrence,
            "status": MSG_PENDING,
            "attempts": 0,
            "next_attempt_at": not_before or now,
            "queued_at": queued_at,
            "created_at": now,
            "updated_at": now,
        }
        for customer_id in customer_ids
        for channel in channels
    ]
    if not rows:
        return []
    insert = pg_insert if is_postgres() else sqlite_insert
    # One cached statement run as executemany: SQLAlchemy batches it into
    # multi-row INSERTs with RETURNING ("insertmanyvalues").
    statement = insert(table).on_conflict_do_nothing(
        index_elements=["campaign_id", "customer_id", "channel", "occurrence"]
    ).returning(table.c.id)
    return sorted(db.session.execute(statement, rows).scalars())


def log_event(message: Message, status: str, detail: str | None = None) -> None:
    db.session.add(
        MessageEvent(
            merchant_id=message.merchant_id,
            message_id=message.id,
            status=status,
            detail=(detail or "")[:500] or None,
        )
    )


def claim(message_ids: list[int], now: datetime | None = None) -> list[Message]:
    """Take the given rows that are due and unclaimed; they become `sending` under a lease.

    The due rows are locked (SKIP LOCKED on PostgreSQL, so two jobs given the
    same ids split them instead of waiting), then changed and returned by one
    UPDATE … RETURNING. The UPDATE names the ids rather than taking them from
    a subquery: a locking subquery cannot be joined, and on a table not yet
    analysed PostgreSQL ran it once per row of the table (2 s for a first
    batch of 1000).
    """
    now = now or utcnow()
    begin_write()
    query = (
        select(Message.id)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(
            among(Message.id, message_ids),
            Message.status == MSG_PENDING,
            Message.next_attempt_at <= now,
            Campaign.status == CAMPAIGN_SENDING,
        )
        .with_for_update(skip_locked=True, of=Message)
    )
    ids = list(db.session.scalars(query))
    if not ids:
        db.session.commit()
        return []
    claimed = db.session.scalars(
        update(Message)
        .where(among(Message.id, ids))
        .values(status=MSG_SENDING, lease_until=now + LEASE, attempts=Message.attempts + 1)
        .returning(Message)
        # populate_existing: rows this session saw before hold older values (a
        # previous batch's lease and status), and the pipeline reads both.
        .execution_options(synchronize_session=False, populate_existing=True)
    ).all()
    db.session.commit()
    return sorted(claimed, key=lambda message: message.id)


class Recorder:
    """Writes one send batch's outcomes, each committed as the batch goes.

    The send pipeline commits each row in flight before its DATA and `sent`
    after it, one row at a time, so this is the hot path: each outcome is one
    statement by primary key on a connection of its own (autocommit on
    PostgreSQL; the status change and its MessageEvent go in one statement
    through a data-modifying CTE), instead of an ORM flush, BEGIN and COMMIT
    per row on the session (bench/send_batch_profile.py: a third of the
    batch's CPU).

    An email batch goes further (note_sent): the `sent` of one message is
    written by the statement that puts the next one in flight, so a message
    costs one statement, not two. Until then the row stays `sending` with
    in_flight_since set, which is what a crash in between must leave: the
    reconciler calls it `unknown` and never sends it again, as it would a
    message killed inside DATA.

    The session's tenant filter does not see Core statements on a bare
    connection, so every statement names the row's merchant itself. The
    Message objects passed in get the new values too (set_committed_value),
    so what the caller reads afterwards matches the database.
    """

    def __init__(self) -> None:
        connection = db.engine.connect()
        if is_postgres():
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        else:
            # SQLite: take the write lock up front (database.py explains why).
            connection = connection.execution_options(sqlite_immediate=True)
        self.connection = connection
        self._postgres = is_postgres()
        # PostgreSQL: the driver's own cursor, prepared statements (_execute).
        self._cursor = None
        # Statements are built once per shape with bound parameters: building
        # and cache-keying a new statement per row cost more than running it.
        self._statements: dict[tuple, list[tuple]] = {}
        self._holds_lease = (
            (table.c.status == MSG_SENDING)
            & (table.c.lease_until == bindparam("c_lease", type_=DateTime))
            & (table.c.lease_until > bindparam("c_now", type_=DateTime))
        )
        # Still this job's claim, lease run out or not: a job that outlived its
        # lease has lost its rows to the reconciler, and another job may have
        # claimed or sent them since, so it must not give them back or skip them.
        self._holds_claim = (
            (table.c.status == MSG_SENDING)
            & (table.c.lease_until == bindparam("c_lease", type_=DateTime))
        )
        self._recipient_checks: dict[int, tuple] = {}
        # A message accepted by the server and not yet written `sent` (note_sent).
        self._accepted: tuple[Message, datetime] | None = None
        # in_flight_soon()'s thread: one, so statements still run one at a time.
        self._helper: ThreadPoolExecutor | None = None

    def close(self) -> None:
        try:
            if self._helper is not None:
                # A statement still running (its caller failed before asking
                # for it) finishes before anything else uses the connection.
                self._helper.shutdown(wait=True)
                self._helper = None
            self.flush()
        finally:
            if self._cursor is not None:
                self._cursor.close()
                self._cursor = None
            self.connection.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _parts(self, names: tuple[str, ...], logs_event: bool, conditions: tuple,
               prefix: str = "") -> tuple:
        """The UPDATE of one row by id and, if it logs, the INSERT of its event.

        Parameters are named `{prefix}c_id`, `{prefix}v_<column>`, ... so that
        two rows' changes can share one statement. On PostgreSQL the event
        rides in the UPDATE's statement (a data-modifying CTE), returned as
        the first part with None for the second.
        """
        update_row = table.update().where(
            table.c.id == bindparam(f"{prefix}c_id"),
            table.c.merchant_id == bindparam(f"{prefix}c_merchant_id"),
            *conditions,
        ).values({name: bindparam(f"{prefix}v_{name}", type_=table.c[name].type)
                  for name in names})
        if not logs_event:
            return update_row, None
        status = bindparam(f"{prefix}e_status", type_=String)
        detail = bindparam(f"{prefix}e_detail", type_=String)
        created_at = bindparam(f"{prefix}v_updated_at", type_=DateTime)
        if self._postgres:
            changed = update_row.returning(table.c.id, table.c.merchant_id).cte(
                f"{prefix}changed")
            return events.insert().from_select(
                ["message_id", "merchant_id", "status", "detail", "created_at"],
                select(changed.c.id, changed.c.merchant_id, status, detail, created_at),
            ), None
        return update_row, events.insert().values(
            message_id=bindparam(f"{prefix}c_id"),
            merchant_id=bindparam(f"{prefix}c_merchant_id"),
            status=status, detail=detail, created_at=created_at,
        )

    def _statement(self, names: tuple[str, ...], logs_event: bool, conditions: tuple,
                   with_sent: bool = False) -> list[tuple]:
        """[(UPDATE, its event's INSERT or None), ...] to run in order, built once per shape.

        The last step is the row asked for; with `with_sent`, the accepted
        message's `sent` (parameters prefixed `s_`) comes first: in the same
        statement on PostgreSQL (CTEs), in the same transaction on SQLite.
        On PostgreSQL the one step is [(SQL text, constant parameters)].
        """
        key = (names, logs_event, tuple(id(c) for c in conditions), with_sent)
        steps = self._statements.get(key)
        if steps is None:
            steps = [self._parts(names, logs_event, conditions)]
            if with_sent:
                sent_row, sent_log = self._parts(tuple(_sent_values(None)), True, (),
                                                 prefix="s_")
                if self._postgres:
                    # WITH s_changed AS (UPDATE … RETURNING), s_logged AS (INSERT …)
                    # UPDATE …: both messages in one round trip and one statement.
                    main, log = steps[0]
                    steps = [(main.add_cte(sent_row.cte("s_logged")), log)]
                else:
                    steps.insert(0, (sent_row, sent_log))
            if self._postgres:
                [(statement, _log)] = steps
                steps = [self._driver_sql(statement)]
            self._statements[key] = steps
        return steps

    def _driver_sql(self, statement) -> tuple[str, dict]:
        """PostgreSQL: the statement compiled once, as SQL text and its constant parameters.

        Executing a Core statement walks all of it for its cache key on every
        call, which for these (CTEs, an EXISTS over the customer) cost more of
        the worker's CPU than the round trip itself. Run as text, only the
        parameters are passed; the constants (the statuses and consent values
        in the conditions) are taken from the compiled statement here. This
        holds only while no parameter needs converting on its way to the
        driver (integers, strings and timestamps on psycopg need none), so
        that is checked.
        """
        dialect = self.connection.dialect
        compiled = statement.compile(dialect=dialect)
        if compiled.positiontup or compiled.escaped_bind_names or any(
            bind.type.bind_processor(dialect) is not None or bind.expanding
            for bind in compiled.binds.values()
        ):
            raise TypeError("this statement's parameters need SQLAlchemy's processing")
        constants = {name: bind.effective_value for name, bind in compiled.binds.items()
                     if not bind.required}
        return compiled.string, constants

    def _apply(self, message: Message, values: dict, event: str | None,
               detail: str | None = None, conditions: tuple = (),
               params: dict | None = None, with_sent: bool = False) -> int:
        """UPDATE the row (and log `event`) in one commit; return the rows changed.

        With `with_sent`, the accepted message (note_sent) is written `sent`
        in the same commit, whatever becomes of this row.
        """
        values.setdefault("updated_at", utcnow())
        accepted = self._accepted if with_sent else None
        if accepted is None:
            self.flush()
        steps = self._statement(tuple(values), event is not None, conditions,
                                accepted is not None)
        bound = {"c_id": message.id, "c_merchant_id": message.merchant_id,
                 "e_status": event, "e_detail": _detail(detail), **(params or {})}
        bound.update((f"v_{name}", value) for name, value in values.items())
        if accepted is not None:
            sent_message, sent_at = accepted
            sent_values = _sent_values(sent_at)
            bound.update({"s_c_id": sent_message.id, "s_c_merchant_id": sent_message.merchant_id,
                          "s_e_status": MSG_SENT, "s_e_detail": None})
            bound.update((f"s_v_{name}", value) for name, value in sent_values.items())
        if self._postgres:
            # One statement (the event rides in it as a CTE), autocommitted.
            [(sql, constants)] = steps
            changed = self._execute(sql, {**constants, **bound})
        else:
            with self.connection.begin():
                for update_row, log in steps:
                    changed = self.connection.execute(update_row, bound).rowcount
                    if changed and log is not None:
                        self.connection.execute(log, bound)
        if accepted is not None:
            self._accepted = None
            for name, value in sent_values.items():
                set_committed_value(sent_message, name, value)
        if changed:
            for name, value in values.items():
                set_committed_value(message, name, value)
        return changed

    def _execute(self, sql: str, params: dict) -> int:
        """PostgreSQL: run `sql` on the driver's cursor as a prepared statement; the rowcount.

        exec_driver_sql() still built an execution context, a cursor and a
        result per call: more of the worker's CPU than psycopg's own work.
        Errors come out as SQLAlchemy's, as they would from exec_driver_sql(),
        and a connection the driver reports lost is invalidated, not pooled.
        With cursor-execute listeners on the engine it is exec_driver_sql().
        """
        dispatch = self.connection.dispatch
        if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            # Someone watches the statements (tracing, a test counting them):
            # the full path, so they see this one too.
            return self.connection.exec_driver_sql(sql, params).rowcount
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = self.connection.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql, params, prepare=True)
        except self._dbapi.Error as exc:
            dialect = self.connection.dialect
            if dialect.is_disconnect(exc, self.connection.connection.dbapi_connection, cursor):
                self._cursor = None
                self.connection.invalidate(exc)
            raise DBAPIError.instance(sql, params, exc, self._dbapi.Error) from exc
        return cursor.rowcount

    @property
    def _dbapi(self):
        return self.connection.dialect.loaded_dbapi

    def note_sent(self, message: Message, now: datetime | None = None) -> None:
        """The server accepted `message`: it is written `sent` by the next statement.

        That is the next in_flight() (one statement for both messages), any
        other outcome, flush() or close(), whichever comes first.
        """
        self.flush()
        self._accepted = (message, now or utcnow())

    def flush(self) -> None:
        """Write the message note_sent() holds, if any."""
        if self._accepted is not None:
            message, sent_at = self._accepted
            self._accepted = None
            self.sent(message, now=sent_at)

    def in_flight(self, message: Message, message_id: str, to_address: str, *,
                  may_receive=None, now: datetime | None = None) -> bool:
        """Record that the message goes on the wire now, if it still may.

        False when this job no longer holds the row (another claim or an
        expired lease: sending now could deliver twice), or when
        `may_receive` (SQL over the customer, eligibility.may_receive) is no
        longer true of the recipient, or the address changed: the consent
        re-check happens in this same statement, at the moment of sending.
        A message note_sent() holds is written `sent` in the same statement.
        """
        now = now or utcnow()
        conditions = (self._holds_lease,)
        if may_receive is not None:
            conditions += (self._recipient_check(may_receive),)
        values = {"in_flight_since": now, "email_message_id": message_id,
                  "to_address": to_address, "updated_at": now}
        params = {"c_lease": message.lease_until, "c_now": now, "c_to": to_address}
        return self._apply(message, values, None, None, conditions, params,
                           with_sent=True) == 1

    def in_flight_soon(self, message: Message, message_id: str, to_address: str, *,
                       may_receive=None) -> Callable[[], bool]:
        """in_flight(), begun now; the function returned waits for it and gives its result.

        On PostgreSQL the statement runs on a helper thread while the caller
        does what needs no database (SMTP's MAIL and RCPT, which deliver
        nothing), so the worker does not wait for the database and then for
        the mail server in turn. The caller must have the result before the
        message's DATA and before it uses this recorder or `message` again;
        asking twice gives the same answer (or raises the same error).
        On SQLite (one connection, one thread) it runs here and now.
        """
        if not self._postgres:
            went = self.in_flight(message, message_id, to_address, may_receive=may_receive)
            return lambda: went
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1,
                                              thread_name_prefix="outbox-recorder")
        return self._helper.submit(self.in_flight, message, message_id, to_address,
                                   may_receive=may_receive).result

    def _recipient_check(self, may_receive):
        known = self._recipient_checks.get(id(may_receive))
        if known is None:
            check = select(Customer.id).where(
                Customer.id == table.c.customer_id,
                Customer.merchant_id == bindparam("c_merchant_id"),
                Customer.email == bindparam("c_to", type_=String),
                may_receive,
            ).exists()
            known = self._recipient_checks[id(may_receive)] = (may_receive, check)
        return known[1]

    def sent(self, message: Message, now: datetime | None = None,
             detail: str | None = None) -> None:
        self._apply(message, _sent_values(now or utcnow()), MSG_SENT, detail)

    def skipped(self, message: Message, reason: str) -> None:
        claimed = message.status == MSG_SENDING
        self._apply(message, {"status": MSG_SKIPPED, "in_flight_since": None,
                              "skip_reason": reason, "lease_until": None}, MSG_SKIPPED, reason,
                    (self._holds_claim,) if claimed else (),
                    {"c_lease": message.lease_until} if claimed else None)

    def failed(self, message: Message, error: str) -> None:
        self._apply(message, {"status": MSG_FAILED, "in_flight_since": None,
                              "last_error": error[:500], "lease_until": None}, MSG_FAILED, error)

    def unknown(self, message: Message, error: str) -> None:
        """The message may have been delivered: record it so, and never resend it blindly."""
        self._apply(message, {"status": MSG_UNKNOWN, "in_flight_since": None,
                              "last_error": error[:500], "lease_until": None},
                    MSG_UNKNOWN, error)

    def release(self, messages: list[Message], reason: str) -> None:
        """Give claimed rows back untouched (a pause, or a dropped connection before sending)."""
        for message in messages:
            if message.status == MSG_SENDING:
                self._apply(message, {"status": MSG_PENDING,
                                      "attempts": max(message.attempts - 1, 0),
                                      "lease_until": None, "queued_at": None},
                            MSG_PENDING, reason, (self._holds_claim,),
                            {"c_lease": message.lease_until})

    def defer(self, message: Message, until: datetime, reason: str) -> None:
        """Back to pending, due later; the attempt does not count (quiet hours)."""
        self._apply(message, {"status": MSG_PENDING, "attempts": max(message.attempts - 1, 0),
                              "next_attempt_at": until, "lease_until": None,
                              "queued_at": None}, "deferred", reason)

    def retry_later(self, message: Message, error: str, now: datetime | None = None) -> None:
        """A temporary failure: back-off, or a permanent failure after MAX_ATTEMPTS."""
        if message.attempts >= MAX_ATTEMPTS:
            self.failed(message, f"gave up after {message.attempts} attempts: {error}")
            return
        delay = RETRY_DELAYS[min(message.attempts, len(RETRY_DELAYS)) - 1]
        self._apply(message, {"status": MSG_PENDING, "in_flight_since": None,
                              "last_error": error[:500],
                              "next_attempt_at": (now or utcnow()) + delay,
                              "lease_until": None, "queued_at": None},
                    "retry", f"{error} (next try in {int(delay.total_seconds())} s)")


def _sent_values(at: datetime | None) -> dict:
    """The columns a `sent` row gets (one dict shape: one cached statement)."""
    return {"status": MSG_SENT, "in_flight_since": None, "sent_at": at, "lease_until": None,
            "last_error": None, "updated_at": at}


def _detail(detail: str | None) -> str | None:
    return (detail or "")[:500] or None


def expire_leases(now: datetime | None = None) -> dict[str, int]:
    """Repair rows left `sending` by a dead worker.

    A row that was on the wire (in_flight_since set) may have been delivered:
    it becomes `unknown` and is never resent. A row the worker had claimed but
    not yet begun goes back to `pending`. So a crash leaves at most one
    ambiguous message per SMTP connection.
    """
    now = now or utcnow()
    begin_write()
    stale = list(
        db.session.scalars(
            select(Message)
            .where(Message.status == MSG_SENDING, Message.lease_until < now)
            .with_for_update(skip_locked=True)
        )
    )
    report = {"unknown": 0, "released": 0}
    for message in stale:
        message.lease_until = None
        if message.in_flight_since is not None:
            message.status = MSG_UNKNOWN
            message.last_error = "the worker stopped while sending; it may have been delivered"
            log_event(message, MSG_UNKNOWN, message.last_error)
            report["unknown"] += 1
        else:
            message.status = MSG_PENDING
            message.attempts = max(message.attempts - 1, 0)
            message.queued_at = None
            log_event(message, MSG_PENDING, "released: its worker stopped before sending it")
            report["released"] += 1
    db.session.commit()
    return report


def due_unqueued(campaign_id: int, stale_after: timedelta, limit: int, now: datetime) -> list[int]:
    """Pending rows that are due and have no live job (never queued, or queued long ago)."""
    query = (
        select(Message.id)
        .where(
            Message.campaign_id == campaign_id,
            Message.status == MSG_PENDING,
            Message.next_attempt_at <= now,
            (Message.queued_at.is_(None)) | (Message.queued_at < now - stale_after),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    return list(db.session.scalars(query))


def mark_queued(message_ids: list[int], now: datetime) -> None:
    db.session.execute(
        update(Message)
        .where(among(Message.id, message_ids))
        .values(queued_at=now)
        .execution_options(synchronize_session=False)
    )


def counts(campaign_id: int) -> dict[str, int]:
    """Messages per status, and skipped per reason (`skipped:no_consent`)."""
    rows = db.session.execute(
        select(Message.status, Message.skip_reason, func.count(Message.id))
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.status, Message.skip_reason)
    ).all()
    result = {state: 0 for state in (MSG_PENDING, MSG_SENDING, MSG_SENT, MSG_FAILED,
                                     MSG_SKIPPED, MSG_UNKNOWN)}
    for status, reason, count in rows:
        result[status] = result.get(status, 0) + count
        if status == MSG_SKIPPED and reason:
            result[f"skipped:{reason}"] = result.get(f"skipped:{reason}", 0) + count
    result["total"] = sum(result[s] for s in (MSG_PENDING, MSG_SENDING, MSG_SENT, MSG_FAILED,
                                               MSG_SKIPPED, MSG_UNKNOWN))
    return result
