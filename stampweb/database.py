"""Engine set-up per database kind, and the write-lock helper services use.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy
timeout. pysqlite's own transaction handling defers BEGIN in a way that makes
two writers deadlock instead of waiting, so we emit BEGIN ourselves and let a
service ask for BEGIN IMMEDIATE, which takes the write lock up front and makes
concurrent writers queue on the busy timeout. On PostgreSQL the same services
lock the rows they change with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .extensions import db

SQLITE_BUSY_TIMEOUT_MS = 15_000


def configure_engine(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # BEGIN is emitted below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection):
        immediate = connection.get_execution_options().get("sqlite_immediate")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def begin_write() -> None:
    """Start the session's next transaction as a writer.

    Call before reading rows you are about to change under concurrency (a
    card being stamped, outbox rows being claimed). On SQLite this takes the
    database's write lock now; on PostgreSQL it is a plain BEGIN and the
    caller locks its rows with `with_for_update()`. A read-only transaction
    already open (e.g. the one that loaded the logged-in user) is ended first.
    """
    session = db.session()  # the scoped_session does not proxy in_transaction()
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("begin_write() with unflushed changes; commit them first")
        session.commit()
    session.connection(execution_options={"sqlite_immediate": True})


def is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"
