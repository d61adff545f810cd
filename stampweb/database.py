"""Engine set-up per database kind, and the write-lock helper services use.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy
timeout. pysqlite's own transaction handling defers BEGIN in a way that makes
two writers deadlock instead of waiting, so we emit BEGIN ourselves and let a
service ask for BEGIN IMMEDIATE, which takes the write lock up front and makes
concurrent writers queue on the busy timeout. On PostgreSQL the same services
lock the rows they change with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import any_, bindparam, event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine

from .extensions import db

SQLITE_BUSY_TIMEOUT_MS = 15_000

log = logging.getLogger(__name__)


def configure_engine(engine: Engine, *, checkpoint_ms: int = 0) -> None:
    """SQLite's pragmas and BEGIN handling; with checkpoint_ms, a background checkpointer.

    In WAL mode SQLite copies the log back into the database file (a
    checkpoint, with two fsyncs) inside whichever commit makes the log pass
    1000 pages, while that writer still holds the write lock: on this
    project's 2-core test machine a commit took 43 us at the median but 13 ms
    at the 99th percentile and up to 176 ms, and every other writer (each
    staff tap) queued behind it. With checkpoint_ms > 0 each process that
    connects runs a thread that checkpoints every checkpoint_ms, PASSIVE
    (it never blocks writers or readers, and its fsyncs wait outside the
    write lock); the commit-time checkpoint stays as a safety net, at ten
    times the log size, should the thread fall behind or not run.
    """
    if engine.dialect.name != "sqlite":
        return
    path = engine.url.database
    on_disk = bool(path) and path != ":memory:" and not path.startswith("file:")
    background = checkpoint_ms > 0 and on_disk

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # BEGIN is emitted below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if background:
            cursor.execute(f"PRAGMA wal_autocheckpoint={SAFETY_NET_CHECKPOINT_PAGES}")
            _start_checkpointer(path, checkpoint_ms / 1000)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection):
        immediate = connection.get_execution_options().get("sqlite_immediate")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


SAFETY_NET_CHECKPOINT_PAGES = 10_000  # SQLite's default is 1000 (4 MB of log)
_checkpointers: dict[tuple[int, str], threading.Thread] = {}  # (pid, database path)
_checkpointers_lock = threading.Lock()


def _start_checkpointer(path: str, interval: float) -> None:
    """One checkpointing thread per process and database file (a fork starts its own)."""
    key = (os.getpid(), os.path.abspath(path))
    with _checkpointers_lock:
        if key in _checkpointers:
            return
        thread = threading.Thread(target=_checkpoint_every, args=(key[1], interval),
                                  name="sqlite-checkpointer", daemon=True)
        _checkpointers[key] = thread
    thread.start()


def _checkpoint_every(path: str, interval: float) -> None:
    # Its own connection: a pooled one might be inside a transaction. The
    # PRAGMA runs in SQLite's C code with the interpreter lock released, so
    # the fsyncs hold up neither requests nor writers. Several processes may
    # try at once; the ones that find a checkpoint running just skip a turn.
    connection = sqlite3.connect(path, timeout=0, isolation_level=None,
                                 check_same_thread=False)
    try:
        while os.path.exists(path):
            time.sleep(interval)
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # never fatal: the safety net remains
                log.warning("background checkpoint of %s failed: %s", path, exc)
    finally:
        connection.close()


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
        if is_sqlite():
            _restart_as_writer(session)
            return
        session.commit()
    session.connection(execution_options={"sqlite_immediate": True})


def _restart_as_writer(session) -> None:
    """SQLite: end the read transaction and take the write lock on the same connection.

    What session.commit() and a new connection would do, at a third of the
    cost (giving the connection back to the pool and checking it out again
    is most of it, and a staff stamp pays it on every tap). The session's
    objects are expired as a commit expires them, so what is read next is
    read under the write lock.
    """
    session.expire_all()
    connection = session.connection()
    if connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("COMMIT")
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def is_sqlite() -> bool:
    return db.engine.dialect.name == "sqlite"


def among(column, values):
    """`column IN values` for a long list (a send batch's thousand ids).

    On PostgreSQL it is `column = ANY(:array)`, one parameter: an IN list is
    one placeholder per value, and psycopg re-parses such a statement on
    every call (it caches only short ones), which cost a send batch a tenth
    of its CPU. SQLite has no arrays, and its IN is cheap.
    """
    if is_postgres():
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


_writer_threads = threading.Lock()
_writer_lock_files: dict[tuple[int, str], int] = {}  # (pid, database path) -> fd


@contextmanager
def one_writer() -> Iterator[None]:
    """On SQLite, let one write transaction at a time in, across threads and processes.

    SQLite has one write lock per database file, and a connection that finds
    it taken sleeps in SQLite's busy handler in growing steps (up to 100 ms),
    so under a burst of taps the unlucky ones wait far longer than the work
    takes. Queueing instead on locks that wake the next waiter as soon as the
    holder is done keeps the wait close to the work: a thread lock among this
    process's threads, and flock(2) on a file beside the database among
    processes (gunicorn workers). Writers that do not take it (jobs, admin
    pages) still meet SQLite's lock and its busy timeout, as before.
    PostgreSQL locks only the rows a service changes and needs none of this.
    """
    engine = db.engine
    if engine.dialect.name != "sqlite":
        yield
        return
    path = engine.url.database
    with _writer_threads:
        if not path or path == ":memory:" or path.startswith("file:"):
            yield
            return
        fd = _writer_lock_file(path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _writer_lock_file(path: str) -> int:
    # Opened once per process: a descriptor inherited across fork() shares its
    # lock with the parent, so it would not keep two workers apart.
    key = (os.getpid(), os.path.abspath(path))
    fd = _writer_lock_files.get(key)
    if fd is None:
        fd = os.open(key[1] + "-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _writer_lock_files[key] = fd
    return fd
