"""Benchmark: staff stamping while a 50,000-recipient campaign is sending.

    .venv/bin/python bench/load.py [--customers 50000] [--clients 20] [--seconds 30]
                                   [--quiet-seconds 10] [--workers 2]
                                   [--web-workers 2] [--threads 4]

What production looks like: a private PostgreSQL and Redis (tests/servers.py),
gunicorn serving the app, `flask worker` processes sending one email campaign
to every customer over SMTP to a lean counting sink, and staff phones stamping
cards of the same merchant at the same time. The set-up is bench/campaign.py's
(servers, sink, seed, workers) and the staff phones are bench/stamp.py's
clients (a keep-alive connection and cookies each, the htmx stamp POST).

Two windows, the same clients each time:

- quiet: stamping alone for --quiet-seconds, a baseline on this machine;
- under load: the campaign is started, and once its first message reached the
  sink the clients stamp for --seconds while the workers send.

For each window it prints p50/p95/p99 stamp latency and stamps per second, and
for the loaded one the messages per second the sink received in that window.
The last line is JSON with stamp_p95_ms, stamp_p99_ms, stamp_rps, msgs_per_s
(and the quiet figures). Timings are reported, never asserted: the machine's
load decides them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import campaign as campaign_bench  # bench/campaign.py: servers, sink, seed, workers
import stamp as stamp_bench  # bench/stamp.py: the staff phone client

PROJECT_ROOT = campaign_bench.PROJECT_ROOT
VENV_BIN = campaign_bench.VENV_BIN


def add_staff_and_list_cards(app, merchant_id: int) -> list[str]:
    """The staff login bench/stamp.py's clients use, and every card code to stamp."""
    from sqlalchemy import select

    from stampweb.accounts import create_user
    from stampweb.extensions import db
    from stampweb.models import Card
    from stampweb.tenancy import tenant

    with app.app_context(), tenant(merchant_id):
        create_user(merchant_id=merchant_id, email=stamp_bench.STAFF_EMAIL,
                    password=stamp_bench.PASSWORD, role="staff")
        db.session.commit()
        return list(db.session.scalars(select(Card.code).order_by(Card.id)))


def start_gunicorn(env: dict, port: int, web_workers: int, threads: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "--workers", str(web_workers), "--threads", str(threads),
         "--worker-class", "gthread", "--keep-alive", "60", "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "app:app"],
        cwd=PROJECT_ROOT, env=env, start_new_session=True,
    )
    stamp_bench.wait_for_server(port, proc)
    return proc


def stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def start_campaign(app, merchant_id: int, campaign_id: int) -> None:
    from stampweb.campaigns import sending
    from stampweb.tenancy import tenant

    with app.app_context(), tenant(merchant_id):
        sending.start(campaign_id)


def campaign_state(app, merchant_id: int, campaign_id: int) -> str:
    from stampweb.extensions import db
    from stampweb.models.campaigns import Campaign
    from stampweb.tenancy import tenant

    with app.app_context(), tenant(merchant_id):
        return db.session.get(Campaign, campaign_id).status


def describe(name: str, phase: dict) -> str:
    return (f"{name}: {phase['rps']:.0f} stamps/s, p50 {phase['p50_ms']:.1f} ms, "
            f"p95 {phase['p95_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms, "
            f"{phase['requests']} stamps, {phase['failures']} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0, help="the loaded window")
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="the quiet window")
    parser.add_argument("--workers", type=int, default=2, help="RQ worker processes")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn process")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    args = parser.parse_args()

    sys.path.insert(0, str(PROJECT_ROOT))
    workdir = Path(tempfile.mkdtemp(prefix="stampweb-bench-load-"))
    instance = workdir / "instance"
    instance.mkdir()
    backends = campaign_bench.Backends(instance, sqlite=False, durable=False)
    sink = workers = gunicorn = None
    try:
        t0 = time.monotonic()
        sink = campaign_bench.Sink(workdir).start()
        port = stamp_bench.free_port()
        env = campaign_bench.process_env(backends.start(), sink.port)
        # Plain http on localhost for the staff phones; login is not what is measured.
        env.update(BASE_URL=f"http://127.0.0.1:{port}", RATELIMIT_ENABLED="false")
        campaign_bench.migrate(env)
        for name in ("DATABASE_URL", "REDIS_URL"):
            os.environ.pop(name, None)
        os.environ.update(env)
        from stampweb import create_app

        app = create_app()
        merchant_id, campaign_id = campaign_bench.seed(app, args.customers)
        codes = add_staff_and_list_cards(app, merchant_id)
        gunicorn = start_gunicorn(env, port, args.web_workers, args.threads)
        workers = campaign_bench.Workers(env, workdir)
        workers.start(args.workers)
        campaign_bench.wait_for_workers(app, args.workers)
        clients = [stamp_bench.Client(port) for _ in range(args.clients)]
        for client in clients:
            client.login()
        print(f"setup: {time.monotonic() - t0:.1f} s (PostgreSQL, {args.customers} customers "
              f"and cards, gunicorn {args.web_workers}x{args.threads} gthread, "
              f"{args.workers} workers, {args.clients} staff logged in)", flush=True)

        code_iter = iter(codes)
        stamp_bench.run_phase(clients, "stamp", 1.0, code_iter)  # warm-up
        quiet = stamp_bench.run_phase(clients, "stamp", args.quiet_seconds, code_iter)
        print(describe("quiet", quiet), flush=True)

        started = time.monotonic()
        start_campaign(app, merchant_id, campaign_id)
        while sink.count == 0:
            if time.monotonic() - started > 120:
                raise RuntimeError("the campaign sent nothing within 120 s")
            if not workers.alive():
                raise RuntimeError("a worker exited; see its log (--keep)")
            time.sleep(0.1)
        first_message_s = time.monotonic() - started
        sent_before, window_began = sink.count, time.monotonic()
        loaded = stamp_bench.run_phase(clients, "stamp", args.seconds, code_iter)
        sent_after, window_ended = sink.count, time.monotonic()
        status = campaign_state(app, merchant_id, campaign_id)
        load_average = os.getloadavg()[0]
    finally:
        stop_group(gunicorn)
        campaign_bench.tear_down(workers, sink, backends, workdir, keep=args.keep)

    window = window_ended - window_began
    msgs_per_s = (sent_after - sent_before) / window if window else 0.0
    print(describe("while sending", loaded))
    print(f"campaign: first message {first_message_s:.1f} s after start; "
          f"{sent_after - sent_before} messages in the {window:.1f} s window "
          f"({msgs_per_s:.0f} msg/s); {sent_after} of {args.customers} sent by its end, "
          f"campaign {status}")
    print(f"load average (1 min) at the end: {load_average:.1f} on {os.cpu_count()} cores")
    print(json.dumps({
        "customers": args.customers,
        "clients": args.clients,
        "workers": args.workers,
        "stamp_p50_ms": round(loaded["p50_ms"], 2),
        "stamp_p95_ms": round(loaded["p95_ms"], 2),
        "stamp_p99_ms": round(loaded["p99_ms"], 2),
        "stamp_rps": round(loaded["rps"], 1),
        "stamp_failures": loaded["failures"],
        "msgs_per_s": round(msgs_per_s, 1),
        "quiet_stamp_p95_ms": round(quiet["p95_ms"], 2),
        "quiet_stamp_p99_ms": round(quiet["p99_ms"], 2),
        "quiet_stamp_rps": round(quiet["rps"], 1),
    }))


if __name__ == "__main__":
    main()
