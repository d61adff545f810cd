"""`flask --app app …` commands: seeding, accounts, the worker and `run-all`."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from . import embedded_redis
from .accounts import AccountError, create_merchant, create_user
from .extensions import db
from .models import ROLES, Merchant
from .tenancy import tenant, unscoped

GUNICORN_CONFIG = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


def _fail(exc: AccountError) -> None:
    raise click.UsageError(f"{exc.field}: {exc.message}")


@click.command("seed-demo")
@click.option("--customers", default=300, show_default=True)
@click.option("--if-empty", is_flag=True, help="Do nothing when a merchant exists.")
@with_appcontext
def seed_demo_command(customers: int, if_empty: bool) -> None:
    """Create the demo merchant (slug `demo`) with users and customers."""
    from .demo import DEMO_USERS, demo_exists, seed_demo

    with unscoped():
        if if_empty and db.session.query(Merchant.id).first() is not None:
            click.echo("Database already has merchants; not seeding.")
            return
        if demo_exists():
            raise click.UsageError("The demo merchant exists already.")
        configured = current_app.config.get("DEMO_PASSWORD")
        password = seed_demo(configured, customers=customers)
    click.echo(f"Demo merchant 'demo' created with {customers} customers.")
    for email in DEMO_USERS:
        click.echo(f"  login: {email}")
    if configured:
        click.echo("  password: the value of DEMO_PASSWORD")
    else:
        click.echo(f"  password: {password}")


@click.command("create-merchant")
@click.option("--name", required=True)
@click.option("--slug", required=True)
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--locale", default="en", show_default=True)
@click.option("--owner-email", required=True)
@click.option("--owner-password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def create_merchant_command(name, slug, timezone, locale, owner_email, owner_password) -> None:
    """Create a merchant with its program, a location and its owner."""
    try:
        merchant = create_merchant(
            name=name, slug=slug, timezone=timezone, locale=locale,
            owner_email=owner_email, owner_password=owner_password,
        )
    except AccountError as exc:
        _fail(exc)
    db.session.commit()
    click.echo(f"Merchant {merchant.slug} created; {owner_email} can log in.")


@click.command("create-user")
@click.option("--merchant", "slug", required=True, help="The merchant's slug.")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(ROLES), default="staff", show_default=True)
@click.option("--name", default="")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def create_user_command(slug, email, role, name, password) -> None:
    """Add a user to a merchant."""
    merchant = db.session.query(Merchant).filter_by(slug=slug).one_or_none()
    if merchant is None:
        raise click.UsageError(f"No merchant with slug {slug!r}.")
    with tenant(merchant.id):
        try:
            create_user(merchant_id=merchant.id, email=email, password=password,
                        role=role, name=name)
        except AccountError as exc:
            _fail(exc)
        db.session.commit()
    click.echo(f"{email} ({role}) can now log in to {slug}.")


@click.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--queues", default=None, help="Comma-separated; default all, urgent first.")
@click.option("--no-fork", is_flag=True,
              help="Run jobs in this process (keeps connections open between jobs).")
@with_appcontext
def worker_command(burst: bool, queues: str | None, no_fork: bool) -> None:
    """Run an RQ worker that built the app once and imported every task module.

    Workers fork a work-horse per job by default, so a job that crashes or is
    killed cannot take the worker down. `--no-fork` is for the wallet queue:
    its jobs are short, and pushes then reuse one HTTP/2 connection to APNs
    for the worker's life instead of opening one per job.
    """
    from rq import SimpleWorker, Worker

    from .tasks import loader
    from .tasks.queues import QUEUES, WORKER_HEARTBEAT_TTL, redis_connection, set_worker_app

    loader.import_task_modules()
    app = current_app._get_current_object()
    # Compiled here once, the email templates are inherited by every forked
    # work-horse instead of being compiled again for each job.
    for name in app.jinja_env.list_templates(filter_func=lambda n: n.startswith("email/")):
        app.jinja_env.get_template(name)
    set_worker_app(app)
    connection = redis_connection()
    names = queues.split(",") if queues else list(QUEUES)
    # The app context stays pushed in this parent process only for set-up;
    # each job pushes its own, so no session is shared between jobs.
    worker_class = SimpleWorker if no_fork else Worker
    worker = worker_class(names, connection=connection, worker_ttl=WORKER_HEARTBEAT_TTL)
    # Everything built so far (app, templates, modules) lives as long as the
    # worker: out of the collector's reach, a forked work-horse's collections
    # no longer write to every shared page and copy it (bench/send_batch_profile:
    # ~10,000 fewer page faults a send batch).
    gc.freeze()
    worker.work(burst=burst, with_scheduler=True)


@click.command("cron")
@with_appcontext
def cron_command() -> None:
    """Run the `rq cron` table (stampweb/tasks/cron.py), riding out Redis restarts.

    rq's own `rq cron` exits on the first Redis error, so a Redis restart would
    stop the reconciler and every periodic job (and `run-all` with them). This
    runs the same scheduler and starts it again, keeping its timetable.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from rq.cron import CronScheduler
    from rq.exceptions import StopRequested

    from .tasks.queues import redis_connection

    scheduler = CronScheduler(connection=redis_connection())
    scheduler.load_config_from_file("stampweb.tasks.cron")
    delay = 1.0
    while True:
        began = time.monotonic()
        try:
            scheduler.start()  # returns when stopped by SIGINT/SIGTERM
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if time.monotonic() - began > 60:
                delay = 1.0  # it had been running: a new outage
            click.echo(f"cron: Redis unavailable ({exc}); starting again in {delay:.0f} s",
                       err=True)
            try:
                time.sleep(delay)
            except StopRequested:  # rq's SIGTERM handler, still installed
                return
            delay = min(delay * 2, 30.0)


@click.command("run-all")
@click.option("--workers", default=1, show_default=True, help="RQ worker processes.")
@click.option("--web-workers", type=int, default=None,
              help="gunicorn processes [default: one per core, see gunicorn.conf.py].")
@click.option("--dev", is_flag=True, help="Flask's debug server instead of gunicorn.")
def run_all_command(workers: int, web_workers: int | None, dev: bool) -> None:
    """Start web, worker(s) and cron together; Ctrl-C stops them all."""
    app: Flask = current_app._get_current_object()
    port = app.config["PORT"]
    redis_url = app.config["REDIS_URL"]
    env = {**os.environ, "REDIS_URL": redis_url}
    venv_bin = Path(sys.executable).parent
    if dev:
        web = [str(venv_bin / "flask"), "--app", "app", "run", "--debug",
               "--host", "0.0.0.0", "--port", str(port)]
    else:
        # Workers, threads, keep-alive and logging: gunicorn.conf.py, shared
        # with production and bench/stamp.py.
        web = [str(venv_bin / "gunicorn"), "--config", str(GUNICORN_CONFIG),
               "--bind", f"0.0.0.0:{port}", "app:app"]
        if web_workers:
            web[1:1] = ["--workers", str(web_workers)]
    commands = [("web", web)]
    flask = [str(venv_bin / "flask"), "--app", "app"]
    for n in range(workers):
        commands.append((f"worker{n + 1}", [*flask, "worker"]))
    # Wallet pushes get a worker that keeps its APNs connection open (see tasks/queues.py).
    commands.append(("wallet-worker", [*flask, "worker", "--queues", "wallet", "--no-fork"]))
    commands.append(("cron", [*flask, "cron"]))
    processes: list[tuple[str, subprocess.Popen]] = []
    for name, argv in commands:
        processes.append((name, subprocess.Popen(argv, env=env, start_new_session=True)))
    click.echo(f"stampweb is running on {app.config['BASE_URL']}/ (Ctrl-C stops it)")

    stopping = False

    def _stop(_signum=None, _frame=None):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        for name, proc in processes:
            if proc.poll() is not None:
                click.echo(f"{name} exited with {proc.returncode}; stopping everything.", err=True)
                exit_code = 1
                stopping = True
        time.sleep(0.3)
    for _name, proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for _name, proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    if not os.environ.get("REDIS_URL"):
        embedded_redis.shutdown(Path(app.instance_path))
    click.echo("stampweb stopped.")
    sys.exit(exit_code)


def register_cli(app: Flask) -> None:
    for command in (
        seed_demo_command,
        create_merchant_command,
        create_user_command,
        worker_command,
        cron_command,
        run_all_command,
    ):
        app.cli.add_command(command)
    from .cli_wallet import wallet_cli; app.cli.add_command(wallet_cli)  # noqa: E702, I001
    from .campaigns.tags_cli import tags_cli; app.cli.add_command(tags_cli)  # noqa: E702, I001
    from .automations_cli import automations_cli; app.cli.add_command(automations_cli)  # noqa: E702, E501, I001
    from .api_cli import api_key_cli; app.cli.add_command(api_key_cli)  # noqa: E702, I001
