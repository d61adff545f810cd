"""Fixtures: fast unit apps on SQLite + fakeredis, and integration apps on real
PostgreSQL, Redis, SMTP and RQ worker processes started by the test run.

In CI (CI=true) a skipped integration test fails the run: the real-server
proof must never silently disappear.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

# Before stampweb is imported anywhere: keep the tests' secret key and
# embedded files out of the developer's instance/ folder.
_TEST_INSTANCE = Path(tempfile.mkdtemp(prefix="stampweb-test-instance-"))
atexit.register(shutil.rmtree, _TEST_INSTANCE, ignore_errors=True)
os.environ["STAMPWEB_INSTANCE_PATH"] = str(_TEST_INSTANCE)
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
for _name in ("DATABASE_URL", "REDIS_URL", "MAIL_SERVER", "BASE_URL"):
    os.environ.pop(_name, None)

from stampweb import create_app  # noqa: E402
from stampweb.extensions import db  # noqa: E402

from . import servers  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs real servers started by the test run")
    config.addinivalue_line("markers", "browser: drives headless Chromium")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    real = [r for r in skipped if "integration" in r.keywords or "browser" in r.keywords]
    if real:
        reporter.write_line(
            f"CI: {len(real)} integration/browser test(s) were skipped; that is a failure.",
            red=True,
        )
        session.exitstatus = 1


def unit_config(tmp_path: Path, **overrides) -> dict:
    return {
        "TESTING": True,
        "INSTANCE_PATH": str(tmp_path),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'test.db'}",
        "REDIS_URL": f"fakeredis://{uuid.uuid4().hex}",
        "SERVER_NAME": None,
        # Cheap password hashes keep hundreds of logins fast; one test checks
        # the production parameters (test_auth.py).
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_KIB": 1024,
        # Hundreds of apps on their own SQLite files would each leave a
        # checkpointing thread behind; test_sqlite_checkpoint.py runs one.
        "SQLITE_CHECKPOINT_MS": 0,
        **overrides,
    }


@pytest.fixture
def app(tmp_path):
    """An app on a fresh SQLite file and fakeredis; schema from the models."""
    application = create_app(unit_config(tmp_path))
    with application.app_context():
        db.create_all()
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# --- integration: real servers ------------------------------------------------


@pytest.fixture(scope="session")
def postgres():
    server = servers.start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = servers.start_redis()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def upgrade_to_head(app) -> None:
    from flask_migrate import upgrade

    with app.app_context():
        # "heads": branches made in parallel all apply until they are linearised.
        upgrade(directory=str(PROJECT_ROOT / "migrations"), revision="heads")


@pytest.fixture
def pg_app(tmp_path, pg_url, redis_server):
    """An app on a fresh PostgreSQL database migrated to head, and a real Redis."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    application = create_app(
        unit_config(tmp_path, SQLALCHEMY_DATABASE_URI=pg_url, REDIS_URL=redis_server.url)
    )
    upgrade_to_head(application)
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def smtp():
    """An aiosmtpd sink that records mail and misbehaves on demand (servers.SmtpSink)."""
    with servers.SmtpSink() as sink:
        yield sink


@pytest.fixture
def mail_app(pg_app, smtp):
    """`pg_app` sending its mail to the `smtp` sink."""
    pg_app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port, MAIL_TIMEOUT=3)
    return pg_app


class WorkerProcesses:
    """Real `flask worker` processes on the app's database and Redis."""

    def __init__(self, env: dict):
        self.env = env
        self.processes: list[subprocess.Popen] = []

    def start(self, count: int = 1, burst: bool = False, *extra: str) -> None:
        """`extra` are more `flask worker` options, e.g. "--queues", "wallet", "--no-fork"."""
        for _ in range(count):
            argv = [str(VENV_BIN / "flask"), "--app", "app", "worker", *extra]
            if burst:
                argv.append("--burst")
            self.processes.append(
                subprocess.Popen(argv, cwd=PROJECT_ROOT, env=self.env, start_new_session=True)
            )

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes.clear()


def app_env(app, **extra) -> dict:
    """Environment for a subprocess that must see the same database and Redis."""
    env = {k: v for k, v in os.environ.items() if k not in {"CI_ONLY"}}
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=app.config["REDIS_URL"],
        SECRET_KEY=app.config["SECRET_KEY"],
        STAMPWEB_INSTANCE_PATH=app.config["INSTANCE_PATH"],
        BASE_URL=app.config["BASE_URL"],
        **extra,
    )
    for key in ("MAIL_SERVER", "MAIL_PORT"):
        if app.config.get(key):
            env[key] = str(app.config[key])
    return env


@pytest.fixture
def workers(pg_app):
    procs = WorkerProcesses(app_env(pg_app))
    yield procs
    procs.stop()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")


# === Browser tests: headless Chromium via Playwright ==========================
# Owned by the browser-harness work; helpers and docs in tests/browser.py.
# `live_server(app)` serves `app` or `pg_app` over real HTTP; `browser_page`
# (phone, 360x780) and `desktop_page` (1280x800) are fresh, watched pages;
# `new_page(device, **context_options)` opens more. Mark tests @pytest.mark.browser.
from . import browser as browser_helpers  # noqa: E402


@pytest.fixture
def live_server():
    """Serve a Flask app over HTTP on 127.0.0.1: `server = live_server(app)`; `server.url`.

    Sets app.config["BASE_URL"] to the server's URL; stops the server after the
    test and fails it if the app raised an unhandled exception meanwhile.
    """
    started: list[browser_helpers.LiveServer] = []

    def serve(application) -> browser_helpers.LiveServer:
        server = browser_helpers.LiveServer(application).start()
        started.append(server)
        return server

    yield serve
    failures = []
    for server in reversed(started):
        try:
            server.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, launched once per run through Playwright (never downloaded)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -r requirements-dev.txt")
    if servers.find_chromium() is None:
        pytest.skip("no Chromium: run scripts/system-deps.sh")
    driver = sync_playwright().start()
    try:
        instance = browser_helpers.launch_chromium(driver)
    except BaseException:
        driver.stop()
        raise
    yield instance
    instance.close()
    driver.stop()


@pytest.fixture
def new_page(chromium, request):
    """Open pages: `new_page("phone" | "desktop", **context_options)`.

    Each page gets its own browser context (own cookies), is watched for
    console errors and failed requests, and is closed after the test; when the
    test failed, a `failure-N.png` screenshot of it is saved first.
    """
    contexts = []
    failed_before = request.session.testsfailed

    def open_page(device: str = "phone", **options):
        context = browser_helpers.new_context(chromium, device, **options)
        contexts.append(context)
        page = context.new_page()
        browser_helpers.watch(page)
        return page

    yield open_page
    failed = request.session.testsfailed > failed_before
    for number, context in enumerate(contexts, start=1):
        if failed:
            for page in context.pages:
                try:
                    browser_helpers.screenshot(page, f"failure-{number}")
                except Exception:  # a crashed page must not hide the real failure
                    pass
        context.close()


@pytest.fixture
def browser_page(new_page):
    """A page in a phone-sized context: 360x780, scale 2, touch, mobile user agent."""
    return new_page("phone")


@pytest.fixture
def desktop_page(new_page):
    """A page in a 1280x800 desktop context."""
    return new_page("desktop")


# === end of browser tests block ===============================================
