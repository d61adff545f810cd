"""Named queues, enqueueing with sane limits, and the job wrapper.

Queues by latency class, most urgent first (workers listen in this order):
- transactional: double opt-in and voucher emails a customer is waiting for;
- wallet: pass updates and their APNs pushes (the phone at the counter is
  waiting for the new stamp). `run-all` gives them a worker of their own that
  does not fork, so its HTTP/2 connection to APNs lives as long as the worker;
  every other worker still listens here too, so nothing waits if it is down;
- default: webhooks, periodic jobs;
- bulk: campaign batches.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime, timedelta

import redis
from flask import Flask, current_app, has_app_context
from rq import Queue, Retry, Worker

TRANSACTIONAL = "transactional"
WALLET = "wallet"
DEFAULT = "default"
BULK = "bulk"
QUEUES = (TRANSACTIONAL, WALLET, DEFAULT, BULK)

# A worker that has not beaten its heart for this long is taken for dead.
WORKER_HEARTBEAT_TTL = 60

_worker_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    """Remember the app a worker built before forking; jobs run inside it."""
    global _worker_app
    _worker_app = app


def _app_for_job() -> Flask:
    global _worker_app
    if _worker_app is None:
        from .. import create_app

        _worker_app = create_app()
    return _worker_app


def job(fn):
    """Run an RQ job function inside an app context with a fresh session.

    Forked work-horses inherit the parent's pooled database connections; those
    must never be shared between processes, so the engine drops them (without
    closing the parent's sockets) the first time a new process runs a job.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Always a fresh app context: a forked work-horse inherits the context
        # its parent pushed, and must not share that session.
        app = current_app._get_current_object() if has_app_context() else _app_for_job()
        with app.app_context():
            from ..extensions import db

            if getattr(app, "_stampweb_engine_pid", None) != os.getpid():
                db.engine.dispose(close=False)
                app._stampweb_engine_pid = os.getpid()
            return fn(*args, **kwargs)

    return wrapper


def redis_connection() -> redis.Redis:
    from ..extensions import redis_client

    return redis_client()


def get_queue(name: str, connection: redis.Redis | None = None) -> Queue:
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}")
    return Queue(name, connection=connection or redis_connection())


def enqueue(queue_name: str, func, *args, job_id: str | None = None, **kwargs):
    """Enqueue with timeouts and TTLs set, as every job here must have."""
    options = {
        "job_timeout": kwargs.pop("job_timeout", 600),
        "result_ttl": kwargs.pop("result_ttl", 3600),
        "failure_ttl": kwargs.pop("failure_ttl", 7 * 24 * 3600),
        "retry": kwargs.pop("retry", Retry(max=3, interval=[10, 60, 300])),
    }
    if job_id:
        options["job_id"] = job_id
    if has_app_context() and current_app.config.get("RQ_SYNC"):
        # Tests of pure services may run jobs inline.
        return func(*args, **kwargs)
    return get_queue(queue_name).enqueue(func, args=args, kwargs=kwargs, **options)


def live_worker_count(connection: redis.Redis) -> int:
    """Workers whose heartbeat is recent: the health check's definition of 'up'."""
    cutoff = datetime.now(UTC) - timedelta(seconds=WORKER_HEARTBEAT_TTL * 2)
    count = 0
    for worker in Worker.all(connection=connection):
        beat = worker.last_heartbeat
        if beat is not None and beat.replace(tzinfo=beat.tzinfo or UTC) >= cutoff:
            count += 1
    return count
