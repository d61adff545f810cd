"""Integration tests for the private test servers in tests/servers.py."""

from __future__ import annotations

import os
import smtplib
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from tests.servers import (
    PostgresServer,
    RedisServer,
    ServerError,
    SmtpSink,
    find_chromium,
    free_port,
    start_postgres,
    start_redis,
)

pytestmark = pytest.mark.integration

# smtplib otherwise calls socket.getfqdn(), which can stall on DNS.
CLIENT_NAME = "localhost"


def test_free_port_is_bindable_and_not_repeated() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    port = ports.pop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_find_chromium_returns_path_or_none() -> None:
    path = find_chromium()
    assert path is None or path.startswith("/")


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server  # type: ignore[misc]
    finally:
        server.stop()


def test_postgres_accepts_connections(own_postgres: PostgresServer) -> None:
    assert own_postgres.url.startswith("postgresql+psycopg://postgres@")
    with own_postgres.connect() as conn:
        row = conn.execute("SELECT current_user, version()").fetchone()
        assert row is not None
        assert row[0] == "postgres"
        if not own_postgres.external:
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('fsync',"
                    " 'max_connections', 'listen_addresses', 'server_encoding')"
                ).fetchall()
            )
            assert settings == {
                "fsync": "off",
                "max_connections": "200",
                "listen_addresses": "127.0.0.1",
                "server_encoding": "UTF8",
            }


def test_postgres_create_database_is_usable_and_fresh(
    own_postgres: PostgresServer,
) -> None:
    import psycopg

    url = own_postgres.create_database("servers_selftest")
    assert url.startswith("postgresql+psycopg://") and url.endswith("/servers_selftest")
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("servers_selftest",)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        # create_database() again, while this session is still connected,
        # drops and recreates it: the table is gone.
        assert own_postgres.create_database("servers_selftest") == url
    with psycopg.connect(libpq, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('t')").fetchone()
        assert exists == (None,)
    own_postgres.drop_database("servers_selftest")


def test_postgres_env_override_uses_external_server(
    own_postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Point TEST_DATABASE_URL (plain libpq form) at the private server.
    monkeypatch.setenv("TEST_DATABASE_URL", own_postgres.libpq_url)
    external = start_postgres()
    assert external.external
    assert external.url == own_postgres.url
    url = external.create_database("servers_external")
    with external.connect("servers_external") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert url.endswith("/servers_external")
    external.drop_database("servers_external")
    external.stop()  # no-op: the server keeps running
    with own_postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_stop_removes_process_and_temp_dir() -> None:
    server = PostgresServer().start()
    data_dir, port = server.data_dir, server.port
    assert data_dir is not None and (data_dir / "postmaster.pid").exists()
    server.stop()
    server.stop()  # idempotent
    assert not data_dir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_redis_set_get(own_redis: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(own_redis.url)
    try:
        assert own_redis.url == f"redis://127.0.0.1:{own_redis.port}/0"
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        # No persistence configured.
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_redis_restart_same_port(own_redis: RedisServer) -> None:
    import redis

    port, old_pid = own_redis.port, own_redis.pid
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.set("k", "v")
        own_redis.restart()
        assert own_redis.port == port
        assert own_redis.pid != old_pid
        fresh = redis.Redis.from_url(own_redis.url)
        try:
            assert fresh.ping()
            assert fresh.get("k") is None  # no persistence: data is gone
            fresh.set("k", "v2")
        finally:
            fresh.close()
        # redis-py reconnects the old client on its next command.
        assert client.get("k") == b"v2"
    finally:
        client.close()


def test_redis_kill_then_start_gives_an_outage(own_redis: RedisServer) -> None:
    own_redis.kill()
    assert not own_redis.ping()
    own_redis.start()
    assert own_redis.ping()


def test_redis_stop_cleans_up() -> None:
    server = start_redis()
    if server.external:
        pytest.skip("TEST_REDIS_URL is set")
    assert isinstance(server, RedisServer)
    proc_pid, tmp = server.pid, server.temp_dir
    server.stop()
    assert tmp is not None and not tmp.exists()
    assert proc_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc_pid, 0)


def test_external_redis_refuses_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    server = start_redis()
    assert server.external
    with pytest.raises(ServerError, match="external"):
        server.restart()
    server.stop()  # no-op


# --------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_smtp_server() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture()
def sink(own_smtp_server: SmtpSink) -> Iterator[SmtpSink]:
    own_smtp_server.reset()
    yield own_smtp_server
    own_smtp_server.reset()


def _message(to: str = "alice@example.com", subject: str = "Your stamp") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "shop@stampweb.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("You earned a stamp. 🎉")
    msg.add_alternative("<p>You earned a <b>stamp</b>. 🎉</p>", subtype="html")
    return msg


def _send(sink: SmtpSink, msg: EmailMessage, timeout: float = 5) -> None:
    with smtplib.SMTP(sink.host, sink.port, local_hostname=CLIENT_NAME, timeout=timeout) as client:
        client.send_message(msg)


def test_smtp_receives_multipart_message(sink: SmtpSink) -> None:
    _send(sink, _message())
    [received] = sink.wait_for(1, timeout=5)
    assert received.mail_from == "shop@stampweb.test"
    assert received.rcpt_tos == ("alice@example.com",)
    assert received["Subject"] == "Your stamp"
    assert received.message.is_multipart()
    assert received.message.get_content_type() == "multipart/alternative"
    assert received.body(("plain",)) == "You earned a stamp. 🎉\n"
    assert "<b>stamp</b>" in (received.body(("html",)) or "")
    assert sink.data_count == 1
    sink.clear()
    assert sink.messages == [] and sink.data_count == 0


def test_smtp_wait_for_times_out(sink: SmtpSink) -> None:
    with pytest.raises(TimeoutError, match="expected 1"):
        sink.wait_for(1, timeout=0.1)


def test_smtp_tempfail_451(sink: SmtpSink) -> None:
    sink.mode = "tempfail"
    with pytest.raises(smtplib.SMTPDataError) as excinfo:
        _send(sink, _message())
    assert excinfo.value.smtp_code == 451
    assert sink.data_count == 0 and sink.data_attempts == 1
    sink.mode = "ok"
    _send(sink, _message())
    assert len(sink.wait_for(1)) == 1


def test_smtp_reject_550_at_rcpt(sink: SmtpSink) -> None:
    sink.mode = "reject"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:
        _send(sink, _message())
    assert excinfo.value.recipients["alice@example.com"][0] == 550
    assert sink.messages == []


def test_smtp_reject_550_at_data_for_listed_address(sink: SmtpSink) -> None:
    sink.reject_addresses.add("Bounce@Example.com")
    sink.reject_stage = "data"
    with pytest.raises(smtplib.SMTPDataError) as excinfo:
        _send(sink, _message(to="bounce@example.com"))
    assert excinfo.value.smtp_code == 550
    _send(sink, _message(to="alice@example.com"))
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [("alice@example.com",)]


def test_smtp_fail_next_and_fail_after(sink: SmtpSink) -> None:
    sink.fail_next(1)
    with pytest.raises(smtplib.SMTPDataError):
        _send(sink, _message())
    _send(sink, _message())
    sink.fail_after = 1
    with pytest.raises(smtplib.SMTPDataError) as excinfo:
        _send(sink, _message())
    assert excinfo.value.smtp_code == 451
    assert (sink.data_count, sink.data_attempts) == (1, 3)


def test_smtp_hang_times_out_client(sink: SmtpSink) -> None:
    sink.mode = "hang"
    started = time.monotonic()
    with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected), match="timed out"):
        _send(sink, _message(), timeout=1)
    assert time.monotonic() - started < 4
    # The client is gone: once released, its transaction is dropped.
    sink.mode = "ok"
    deadline = time.monotonic() + 2
    while sink.hanging and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.hanging == 0
    assert sink.messages == []
    _send(sink, _message())
    assert len(sink.wait_for(1)) == 1


def test_smtp_stop_ends_hung_transaction() -> None:
    sink = SmtpSink(auth=True).start()
    sink.mode = "hang"
    client = smtplib.SMTP(sink.host, sink.port, local_hostname=CLIENT_NAME, timeout=10)
    try:
        client.login("user", "secret")
        assert sink.logins == [("PLAIN", "user", "secret")]
        client.mail("shop@stampweb.test")
        client.rcpt("alice@example.com")
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        deadline = time.monotonic() + 5
        while not sink.hanging and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.hanging == 1
        started = time.monotonic()
        sink.stop()  # must not wait for the hung transaction
        assert time.monotonic() - started < 5
        assert not sink.running
    finally:
        client.close()
