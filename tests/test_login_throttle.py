"""Login throttling: per account and per address, counted in Redis so every
gunicorn worker and every web process sees the same count."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from stampweb import create_app
from stampweb.extensions import db

from . import servers
from .conftest import app_env, unit_config, wait_until
from .factories import PASSWORD, csrf_token_from, gen_merchant

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LIMIT = 10  # the first number of LOGIN_RATE_LIMIT's default, "10 per minute;50 per hour"


@pytest.fixture
def shop(app):
    with app.app_context():
        gen_merchant("cafe")
        gen_merchant("bakery")


def _attempt(client, email: str, address: str, password: str = "wrong password"):
    environ = {"REMOTE_ADDR": address}
    page = client.get("/login", environ_base=environ)
    return client.post("/login", environ_base=environ, data={
        "email": email, "password": password, "csrf_token": csrf_token_from(page.text)})


def test_one_account_is_throttled_even_from_many_addresses(app, client, shop):
    """A password guesser spreading over addresses still hits the account's limit."""
    statuses = [_attempt(client, "owner@cafe.test", f"203.0.113.{n}").status_code
                for n in range(1, LIMIT + 2)]
    assert statuses[:LIMIT] == [200] * LIMIT
    assert statuses[LIMIT] == 429
    # The limit is on that account: another account from a fresh address logs in.
    assert _attempt(client, "owner@bakery.test", "198.51.100.7", PASSWORD).status_code == 302


def test_one_address_is_throttled_even_across_many_accounts(app, client, shop):
    """A credential-stuffing address trying a different email each time is stopped."""
    statuses = [_attempt(client, f"user{n}@example.com", "203.0.113.9").status_code
                for n in range(LIMIT + 1)]
    assert statuses[:LIMIT] == [200] * LIMIT
    assert statuses[LIMIT] == 429
    # Another address is not affected.
    assert _attempt(client, "owner@cafe.test", "198.51.100.8", PASSWORD).status_code == 302


def test_throttled_answer_is_a_page_that_says_so(app, client, shop):
    for _ in range(LIMIT):
        _attempt(client, "owner@cafe.test", "203.0.113.10")
    response = _attempt(client, "owner@cafe.test", "203.0.113.10")
    assert response.status_code == 429
    assert "Too many attempts" in response.text
    assert int(response.headers["Retry-After"]) > 0


def test_email_spelling_does_not_reset_the_account_count(app, client, shop):
    """Upper case and spaces reach the same account, so they count for it too."""
    spellings = ["owner@cafe.test", "OWNER@cafe.test", " owner@CAFE.test "]
    statuses = [_attempt(client, spellings[n % 3], f"203.0.113.{n + 20}").status_code
                for n in range(LIMIT + 1)]
    assert statuses[LIMIT] == 429


# --- across processes, on a real Redis --------------------------------------------


@pytest.fixture
def two_web_processes(tmp_path, redis_server):
    """Two gunicorn processes on one SQLite database and one real Redis."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    application = create_app(unit_config(tmp_path, REDIS_URL=redis_server.url))
    with application.app_context():
        db.create_all()
        gen_merchant("cafe")
        db.engine.dispose()
    env = app_env(application)
    procs, urls = [], []
    for _ in range(2):
        port = servers.free_port()
        procs.append(subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "--workers", "1", "--bind", f"127.0.0.1:{port}",
             "app:app"],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        ))
        urls.append(f"http://127.0.0.1:{port}")

    def up(url):
        try:
            return httpx.get(url + "/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        for url in urls:
            wait_until(lambda url=url: up(url), timeout=60, message=f"gunicorn at {url}")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.integration
def test_the_count_is_shared_by_two_web_processes(two_web_processes):
    """Failures sent alternately to two processes add up: the 11th is refused, although
    neither process alone has seen more than six."""
    first, second = two_web_processes
    statuses = []
    # One cookie jar for both: the session (and its CSRF token) is signed with the
    # shared SECRET_KEY, as behind a load balancer.
    with httpx.Client(timeout=30) as client:
        for n in range(LIMIT + 1):
            base = (first, second)[n % 2]
            page = client.get(base + "/login")
            token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
            response = client.post(base + "/login", data={
                "email": "owner@cafe.test", "password": "wrong password",
                "csrf_token": token.group(1)})
            statuses.append(response.status_code)
    assert statuses[:LIMIT] == [200] * LIMIT, statuses
    assert statuses[LIMIT] == 429, statuses


def _attempt_via_proxy(client, email: str, client_address: str):
    environ = {"REMOTE_ADDR": "10.0.0.2"}  # every request arrives from the proxy
    headers = {"X-Forwarded-For": client_address}
    page = client.get("/login", environ_base=environ, headers=headers)
    return client.post("/login", environ_base=environ, headers=headers, data={
        "email": email, "password": "wrong password", "csrf_token": csrf_token_from(page.text)})


def test_behind_a_trusted_proxy_each_client_address_is_counted(tmp_path):
    """With TRUSTED_PROXY_HOPS=1, one client's failures do not lock out the others
    who reach us through the same proxy."""
    application = create_app(unit_config(tmp_path, TRUSTED_PROXY_HOPS=1))
    with application.app_context():
        db.create_all()
    client = application.test_client()
    statuses = [_attempt_via_proxy(client, f"u{n}@example.com", "203.0.113.50").status_code
                for n in range(LIMIT + 1)]
    assert statuses[LIMIT] == 429
    assert _attempt_via_proxy(client, "other@example.com", "203.0.113.51").status_code == 200


def test_without_a_trusted_proxy_a_forged_forwarded_for_changes_nothing(app, client, shop):
    """X-Forwarded-For from the client itself is ignored: rotating it does not reset
    the count of the address the request really comes from."""
    statuses = [_attempt_via_proxy(client, f"u{n}@example.com", f"203.0.113.{n}").status_code
                for n in range(LIMIT + 1)]
    assert statuses[LIMIT] == 429
