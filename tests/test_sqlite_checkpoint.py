"""SQLite's write-ahead log is copied back by a background thread, not by whichever
commit crosses SQLite's threshold while holding the write lock (database.py)."""

from __future__ import annotations

import os
import struct
import threading
import time

from sqlalchemy import text

from stampweb import create_app
from stampweb.database import SAFETY_NET_CHECKPOINT_PAGES
from stampweb.extensions import db

from .conftest import unit_config, wait_until


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpointer" and t.is_alive()]


def _write_pages(app, rows: int) -> None:
    with app.app_context():
        db.session.execute(text("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, "
                                "body TEXT)"))
        for _ in range(rows // 100):
            db.session.execute(text("INSERT INTO filler (body) VALUES (:body)"),
                               [{"body": "x" * 1000}] * 100)
            db.session.commit()


def _log_state(path) -> tuple[int, int]:
    """(frames in the log, frames copied back), read from the WAL index without copying
    anything (PRAGMA wal_checkpoint would copy): mxFrame is at byte 16 of the index
    header, nBackfill at byte 96, after the header's two copies (sqlite's wal.c)."""
    with open(f"{path}-shm", "rb") as index:
        head = index.read(100)
    return struct.unpack_from("=I", head, 16)[0], struct.unpack_from("=I", head, 96)[0]


def test_a_background_thread_copies_the_log_back(tmp_path):
    before = len(_checkpointers())
    app = create_app(unit_config(tmp_path, SQLITE_CHECKPOINT_MS=50))
    path = tmp_path / "test.db"
    try:
        with app.app_context():
            autocheckpoint = db.session.execute(text("PRAGMA wal_autocheckpoint")).scalar()
            db.session.rollback()
        assert autocheckpoint == SAFETY_NET_CHECKPOINT_PAGES
        assert len(_checkpointers()) == before + 1  # one per process and file
        _write_pages(app, 2000)  # about 500 pages of log
        assert len(_checkpointers()) == before + 1

        def copied_back():
            frames, copied = _log_state(path)
            return frames > 0 and frames == copied
        wait_until(copied_back, timeout=10, message="the log copied back")
    finally:
        with app.app_context():
            db.engine.dispose()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{path}{suffix}"):
                os.remove(f"{path}{suffix}")
    # With its file gone, the thread ends.
    wait_until(lambda: len(_checkpointers()) == before, timeout=10,
               message="the checkpointer to stop")


def test_without_it_sqlite_checkpoints_in_the_commit_as_usual(tmp_path):
    """And the test above can fail: with no thread, a log under SQLite's 1000 pages
    stays where it is."""
    before = len(_checkpointers())
    app = create_app(unit_config(tmp_path))  # SQLITE_CHECKPOINT_MS=0
    with app.app_context():
        assert db.session.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 1000
        db.session.rollback()
    _write_pages(app, 2000)
    time.sleep(0.5)
    frames, copied = _log_state(tmp_path / "test.db")
    assert frames > 100 and copied == 0
    with app.app_context():
        db.engine.dispose()
    assert len(_checkpointers()) == before
