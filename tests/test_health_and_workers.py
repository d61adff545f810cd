"""/healthz, RQ workers on a real Redis, and the embedded Redis `make run` uses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from stampweb import embedded_redis
from stampweb.tasks.queues import DEFAULT, QUEUES, get_queue, live_worker_count

from .conftest import PROJECT_ROOT, VENV_BIN, app_env, wait_until


def test_healthz_is_503_without_a_worker(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json == {"database": True, "redis": True, "worker": False,
                             "status": "degraded"}


def test_transactional_queue_is_served_before_bulk():
    assert QUEUES.index("transactional") < QUEUES.index("default") < QUEUES.index("bulk")


@pytest.mark.integration
def test_real_worker_runs_jobs_and_healthz_turns_green(pg_app, workers):
    from stampweb.tasks.maintenance import heartbeat

    client = pg_app.test_client()
    assert client.get("/healthz").json["worker"] is False
    workers.start()
    connection = redis.Redis.from_url(pg_app.config["REDIS_URL"])
    wait_until(lambda: live_worker_count(connection) > 0, message="a worker heartbeat")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"database": True, "redis": True, "worker": True, "status": "ok"}

    with pg_app.app_context():
        job = get_queue(DEFAULT).enqueue(heartbeat)
    wait_until(lambda: job.get_status(refresh=True) == "finished", message="the job to finish")
    assert connection.get("stampweb:cron:last-heartbeat") == b"1"


@pytest.mark.integration
def test_healthz_reports_redis_down(pg_app, redis_server):
    redis_server.kill()
    try:
        response = pg_app.test_client().get("/healthz")
        assert response.status_code == 503
        assert response.json["redis"] is False and response.json["database"] is True
    finally:
        redis_server.start()


@pytest.mark.integration
def test_embedded_redis_is_shared_and_shut_down(tmp_path):
    """Two starters agree on one server on a socket under instance/; shutdown stops it."""
    url_a = embedded_redis.ensure_running(tmp_path)
    url_b = embedded_redis.ensure_running(tmp_path)
    assert url_a == url_b == f"unix://{tmp_path / 'redis.sock'}"
    client = redis.Redis.from_url(url_a)
    client.set("shared", "yes")
    # A separate process sees the same data through the same socket.
    out = subprocess.run(
        [sys.executable, "-c",
         f"import redis; print(redis.Redis.from_url('{url_a}').get('shared').decode())"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "yes"
    embedded_redis.shutdown(tmp_path)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url_a).ping()


@pytest.mark.integration
def test_cron_table_loads(pg_app):
    """`rq cron stampweb.tasks.cron` finds its jobs (the table imports and registers)."""
    code = (
        "from rq.cron import CronScheduler; import redis;"
        f"s = CronScheduler(redis.Redis.from_url('{pg_app.config['REDIS_URL']}'));"
        "s.load_config_from_file('stampweb.tasks.cron');"
        "print(len(s.get_jobs()))"
    )
    out = subprocess.run([str(VENV_BIN / "python"), "-c", code], cwd=PROJECT_ROOT,
                         env=app_env(pg_app), capture_output=True, text=True, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) >= 1
