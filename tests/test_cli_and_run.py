"""The CLI commands, and `run-all` (what `make run` starts) on embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import pytest
from sqlalchemy import func, select

from stampweb.extensions import db
from stampweb.models import Customer, Merchant, User, Visit, Voucher
from stampweb.tenancy import tenant, unscoped

from . import servers
from .conftest import PROJECT_ROOT, VENV_BIN, wait_until


def test_seed_demo_creates_merchant_users_and_history(app, runner, monkeypatch):
    app.config["DEMO_PASSWORD"] = "demo password 123"
    result = runner.invoke(args=["seed-demo", "--customers", "60"])
    assert result.exit_code == 0, result.output
    assert "owner@demo.test" in result.output and "staff@demo.test" in result.output
    with app.app_context():
        merchant = db.session.scalar(select(Merchant).filter_by(slug="demo"))
        with tenant(merchant.id):
            roles = {u.email: u.role for u in db.session.scalars(select(User))}
            assert roles == {"owner@demo.test": "owner", "manager@demo.test": "manager",
                             "staff@demo.test": "staff"}
            assert db.session.scalar(select(func.count(Customer.id))) >= 55
            assert db.session.scalar(select(func.count(Visit.id))) > 100
            assert db.session.scalar(select(func.count(Voucher.id))) > 0
            assert db.session.scalar(
                select(func.count(Customer.id)).where(Customer.email_consent == "granted")
            ) > 0
    again = runner.invoke(args=["seed-demo", "--if-empty"])
    assert again.exit_code == 0 and "not seeding" in again.output


def test_seed_demo_prints_a_generated_password(app, runner):
    result = runner.invoke(args=["seed-demo", "--customers", "5"])
    assert result.exit_code == 0
    assert "password: " in result.output
    assert "DEMO_PASSWORD" not in result.output


def test_create_merchant_and_user(app, runner):
    result = runner.invoke(args=[
        "create-merchant", "--name", "Bakery", "--slug", "bakery", "--timezone",
        "Europe/Berlin", "--locale", "ru", "--owner-email", "boss@bakery.test",
        "--owner-password", "a long password",
    ])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=[
        "create-user", "--merchant", "bakery", "--email", "till@bakery.test",
        "--role", "staff", "--password", "another long one",
    ])
    assert result.exit_code == 0, result.output
    with app.app_context(), unscoped():
        assert db.session.scalar(select(User.role).filter_by(email="till@bakery.test")) == "staff"


def test_create_merchant_rejects_bad_input_clearly(app, runner):
    result = runner.invoke(args=[
        "create-merchant", "--name", "X", "--slug", "Bad Slug!", "--owner-email",
        "a@b.test", "--owner-password", "a long password",
    ])
    assert result.exit_code != 0
    assert "slug" in result.output
    result = runner.invoke(args=[
        "create-merchant", "--name", "X", "--slug", "x", "--timezone", "Mars/Olympus",
        "--owner-email", "a@b.test", "--owner-password", "a long password",
    ])
    assert result.exit_code != 0 and "time zone" in result.output


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@pytest.mark.integration
def test_run_all_on_embedded_defaults_starts_and_stops_cleanly(tmp_path):
    """What `make run` does: migrate, seed, start web + worker + cron; Ctrl-C stops all."""
    port = servers.free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "MAIL_SERVER", "BASE_URL"}}
    env.update(STAMPWEB_INSTANCE_PATH=str(tmp_path / "instance"), PORT=str(port),
               DEMO_PASSWORD="demo password 123")
    flask = str(VENV_BIN / "flask")
    subprocess.run([flask, "--app", "app", "db", "upgrade"], cwd=PROJECT_ROOT, env=env,
                   check=True, capture_output=True)
    seeded = subprocess.run([flask, "--app", "app", "seed-demo", "--if-empty",
                             "--customers", "20"], cwd=PROJECT_ROOT, env=env, check=True,
                            capture_output=True, text=True)
    assert "owner@demo.test" in seeded.stdout
    proc = subprocess.Popen([flask, "--app", "app", "run-all"], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(base + "/login")[0] == 200, timeout=30, message="/login")
        status, body = wait_until(
            lambda: (lambda r: r if r[0] == 200 else None)(_get(base + "/healthz")),
            timeout=60, message="/healthz green",
        )
        assert json.loads(body) == {"database": True, "redis": True, "worker": True,
                                    "status": "ok"}
        assert (tmp_path / "instance" / "redis.sock").exists()
        assert (tmp_path / "instance" / "stampweb.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "stampweb stopped." in output
    assert not (tmp_path / "instance" / "redis.sock").exists()
