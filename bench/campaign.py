"""Benchmark: one email campaign to N opted-in customers through the real pipeline.

    .venv/bin/python bench/campaign.py [--customers 100000] [--workers 2] [--timeout 900]
                                       [--sqlite] [--durable] [--keep]

Production setup: a private PostgreSQL and Redis (tests/servers.py), migrated
with `flask db upgrade heads`; 2 `flask worker` processes; SMTP to a local sink.
With --sqlite the embedded defaults of `make run` are used instead (a SQLite
file and the embedded Redis under a temporary instance directory). The test
PostgreSQL runs with fsync and synchronous_commit off; --durable turns them on.

The script bulk-inserts N customers with granted and confirmed email consent
and a card each (one INSERT … SELECT per table), creates a campaign to
everyone, starts the workers and waits until they have registered, then calls
`sending.start()` and waits until the campaign is `sent` (or --timeout
passes; the figures then cover what was sent so far). It measures

- msgs_per_s: messages at the sink / (last message at the sink - the call to
  start()); the steady rate between 10 % and 90 % is printed too;
- first_message_s: the call to start() until the first DATA at the sink;
- peak_rss_mb: the largest RSS of one worker with all its children (the
  forked work-horse, and RQ's scheduler process), sampled every 0.5 s; RSS
  counts the pages they share, so it is an upper bound. The worker and
  work-horse peaks are printed separately;
- ceiling_msgs_per_s: the same sink fed by plain smtplib over one connection
  with prebuilt messages (copies of the first message the campaign sent, so
  the size is the same), MAIL/RCPT/DATA per message as the pipeline does.

To say where the time goes it also prints CPU milliseconds per message of each
process tree (workers with their work-horses, PostgreSQL, Redis, the sink),
the bulk jobs RQ ran, and, on PostgreSQL, statements per message from
pg_stat_statements with the most frequent ones.

The sink is a lean aiosmtpd server in its own process (no GIL shared with this
driver) that counts DATA commands and keeps one sample; it does not parse or
store messages, so it is not the bottleneck it would be in tests/servers.py.

Human-readable figures come first; the last line is JSON with msgs_per_s,
ceiling_msgs_per_s, ratio, first_message_s and peak_rss_mb (and more).
Targets: >= 500 msg/s and ratio >= 0.5, and worker memory that does not grow
with the audience (compare --customers 10000 with 100000). Timings are
reported, never asserted: the machine's load decides them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SECRET_KEY = "bench-secret-key-not-for-production"
SAMPLE_POLL_S = 0.5

# Sink counters, shared with the sink process (indices into a double array).
COUNT, FIRST, LAST = 0, 1, 2


# --- the SMTP sink, in its own process ---------------------------------------------


class _CountingHandler:
    """aiosmtpd handler: count each DATA, remember when, keep the first message only."""

    def __init__(self, stats, sample_path: str):
        self.stats = stats
        self.sample_path = sample_path

    async def handle_DATA(self, server, session, envelope):
        now = time.monotonic()
        if self.stats[COUNT] == 0:
            self.stats[FIRST] = now
            if not os.path.exists(self.sample_path):
                with open(self.sample_path, "wb") as sample:
                    sample.write(envelope.original_content or envelope.content)
        self.stats[COUNT] += 1
        self.stats[LAST] = now
        return "250 OK"


def _sink_main(port: int, stats, sample_path: str, ready) -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    async def serve() -> None:
        handler = _CountingHandler(stats, sample_path)
        loop = asyncio.get_running_loop()
        # A fixed hostname: aiosmtpd would otherwise call getfqdn() per session.
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.bench", decode_data=False,
                         data_size_limit=10_000_000),
            "127.0.0.1", port,
        )
        ready.set()
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())


class Sink:
    """A counting SMTP sink in a separate process (spawned: no state of this driver)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.sample_path = workdir / "sample.eml"
        context = multiprocessing.get_context("spawn")
        self.stats = context.Array("d", 3, lock=False)
        self._ready = context.Event()
        self._process = context.Process(
            target=_sink_main, args=(self.port, self.stats, str(self.sample_path), self._ready),
            daemon=True,
        )

    def start(self) -> Sink:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        return self

    @property
    def count(self) -> int:
        return int(self.stats[COUNT])

    @property
    def first(self) -> float:
        return self.stats[FIRST]

    @property
    def last(self) -> float:
        return self.stats[LAST]

    def reset(self) -> None:
        for index in (COUNT, FIRST, LAST):
            self.stats[index] = 0.0

    def sample(self) -> bytes | None:
        try:
            return self.sample_path.read_bytes()
        except OSError:
            return None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- back-ends, schema, data ------------------------------------------------------------


class Backends:
    """PostgreSQL + Redis from tests/servers.py, or nothing (embedded SQLite + Redis)."""

    def __init__(self, instance: Path, sqlite: bool, durable: bool):
        self.instance = instance
        self.sqlite = sqlite
        self.durable = durable
        self.postgres = None
        self.redis = None
        self.statement_stats = False

    def start(self) -> dict:
        """Start the servers; return the environment the app's processes share."""
        env = {
            "STAMPWEB_INSTANCE_PATH": str(self.instance),
            "SECRET_KEY": SECRET_KEY,
            "BASE_URL": "https://loyalty.bench.test",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if self.sqlite:
            return env
        from tests.servers import PostgresServer, RedisServer, find_postgres_bindir

        settings = {}
        if self.durable:
            # tests/servers.py turns durability off for speed; a real server has it on.
            settings = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        bindir = find_postgres_bindir()
        if bindir and (bindir.parent / "lib" / "pg_stat_statements.so").exists():
            # Counts every statement the workers run: round trips per message.
            settings["shared_preload_libraries"] = "pg_stat_statements"
            self.statement_stats = True
        self.postgres = PostgresServer(settings=settings).start()
        self.redis = RedisServer().start()
        env["DATABASE_URL"] = self.postgres.create_database("stampweb_bench")
        env["REDIS_URL"] = self.redis.url
        return env

    def pids(self) -> dict[str, list[int | None]]:
        """Root processes of the servers, for CPU accounting (none for the embedded ones)."""
        if self.sqlite:
            return {}
        postmaster = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        return {"postgres": [postmaster], "redis": [self.redis.pid]}

    def stop(self) -> None:
        if self.sqlite:
            from stampweb import embedded_redis

            embedded_redis.shutdown(self.instance)
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()


def process_env(env: dict, mail_port: int | None = None) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "MAIL_SERVER", "MAIL_PORT",
                         "BASE_URL", "STAMPWEB_INSTANCE_PATH"}}
    base.update(env)
    if mail_port is not None:
        base.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(mail_port), MAIL_TIMEOUT="30")
    return base


def migrate(env: dict) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", "db", "upgrade", "heads"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
    )
    if done.returncode:
        raise RuntimeError(f"migration failed:\n{done.stdout}\n{done.stderr}")


def migrated_app(env: dict):
    """Migrate the schema, then the app as one more process of the same deployment."""
    migrate(env)
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ.update(env)
    from stampweb import create_app

    return create_app()


def seed(app, customers: int) -> tuple[int, int]:
    """A merchant, N opted-in customers with a card each, and a draft campaign to all."""
    from sqlalchemy import Integer, String, cast, insert, literal, select

    from stampweb.accounts import create_merchant
    from stampweb.database import is_postgres
    from stampweb.extensions import db
    from stampweb.models import CONSENT_GRANTED, Card, Customer, Program, utcnow
    from stampweb.models.campaigns import Campaign
    from stampweb.tenancy import tenant, unscoped

    with app.app_context():
        with unscoped():
            merchant = create_merchant(name="Bench Cafe", slug="bench",
                                       owner_email="owner@bench.test",
                                       owner_password="bench-password-123")
            merchant.postal_address = "1 Bench Street, Testville"
            db.session.commit()
        merchant_id = merchant.id
        with tenant(merchant_id):
            program_id = db.session.scalar(select(Program.id))
            # One statement per table, numbers generated by the database: the
            # ORM (or even executemany) would spend more time than the sending.
            if is_postgres():
                from sqlalchemy import func

                numbers = select(func.generate_series(1, customers).label("n")).subquery()
            else:
                numbers = _sqlite_series(customers)
            n = numbers.c.n
            text_n = cast(n, String)
            now = utcnow()
            customer_columns = {
                "merchant_id": literal(merchant_id, Integer),
                "first_name": literal("Guest", String) + text_n,
                "last_name": literal("Bench", String),
                "search_name": literal("guest", String) + text_n + literal(" bench", String),
                "email": literal("guest", String) + text_n + literal("@bench.test", String),
                "locale": literal("en", String),
                "email_consent": literal(CONSENT_GRANTED, String),
                "email_confirmed_at": literal(now),
                "joined_at": literal(now),
                "updated_at": literal(now),
            }
            db.session.execute(insert(Customer).from_select(
                list(customer_columns), select(*customer_columns.values()).select_from(numbers)
            ))
            cid = cast(Customer.id, String)
            card_columns = {
                "merchant_id": Customer.merchant_id,
                "customer_id": Customer.id,
                "program_id": literal(program_id, Integer),
                "code": literal("B", String) + cid,
                "token": literal("bench-card-token-", String) + cid,
                "wallet_serial": literal("bench-serial-", String) + cid,
                "wallet_auth_token": literal("bench-auth-", String) + cid,
                "stamps": cast(Customer.id % 10, Integer),
                "created_at": literal(now),
                "updated_at": literal(now),
            }
            # A Core INSERT … SELECT: the tenant listener scopes ORM statements
            # only, so the merchant filter is written out.
            db.session.execute(insert(Card).from_select(
                list(card_columns),
                select(*card_columns.values()).where(Customer.merchant_id == merchant_id),
            ))
            campaign = Campaign(
                merchant_id=merchant_id, name="Bench weekend offer", channels="email",
                subject="Hi {first_name|friend}, {stamps_left} stamps to go",
                preheader="Only this weekend",
                body_markdown="**Two for one** at {reward}.\n\n[Your card]({card_url})\n\n"
                              "Show this email at the counter. See you soon!",
                audience={"type": "all"},
            )
            db.session.add(campaign)
            db.session.commit()
            if is_postgres():
                db.session.execute(_analyze())
                db.session.commit()
            return merchant_id, campaign.id


def _sqlite_series(count: int):
    from sqlalchemy import literal, select

    numbers = select(literal(1).label("n")).cte("numbers", recursive=True)
    numbers = numbers.union_all(select(numbers.c.n + 1).where(numbers.c.n < count))
    return numbers


def _analyze():
    from sqlalchemy import text

    return text("ANALYZE customer; ANALYZE card")


# --- workers and memory --------------------------------------------------------------


class Workers:
    """`flask worker` processes, each in its own session; output goes to a log file."""

    def __init__(self, env: dict, logdir: Path):
        self.env = env
        self.logdir = logdir
        self.processes: list[subprocess.Popen] = []

    def start(self, count: int) -> None:
        for index in range(count):
            log = open(self.logdir / f"worker-{index}.log", "wb")
            self.processes.append(subprocess.Popen(
                [str(VENV_BIN / "flask"), "--app", "app", "worker"],
                cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
            log.close()

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.processes)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.processes.clear()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int, reaped: bool = True) -> float:
    """CPU seconds of a process, plus those of its children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of a process tree: the root (with what it reaped) and live descendants.

    RQ workers wait for each work-horse, and the postmaster for each backend, so
    the CPU of finished children is in the root's cutime/cstime.
    """
    if pid is None:
        return 0.0
    return _cpu_s(pid) + sum(tree_cpu_s(child) for child in _children(pid))


class RssPeaks:
    """Peak RSS of the worker processes, their work-horses, and each worker's whole tree.

    Children a worker already had before the campaign (RQ's scheduler process)
    are counted in the tree but are not work-horses.
    """

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.resident = {child for pid in pids for child in _children(pid)}
        self.worker = 0.0
        self.horse = 0.0
        self.tree = 0.0

    def sample(self) -> None:
        for pid in self.pids:
            worker = _rss_mb(pid)
            children = {child: _rss_mb(child) for child in _children(pid)}
            horses = [rss for child, rss in children.items() if child not in self.resident]
            self.worker = max(self.worker, worker)
            self.horse = max([self.horse, *horses])
            self.tree = max(self.tree, worker + sum(children.values()))


class CpuMeter:
    """CPU seconds used by each named process tree between start() and stop().

    "driver" is this process alone (its children are the workers and the sink).
    """

    def __init__(self, roots: dict[str, list[int | None]]):
        self.roots = roots
        self.used: dict[str, float] = {}
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        used = {name: sum(tree_cpu_s(pid) for pid in pids) for name, pids in self.roots.items()}
        used["driver"] = time.process_time()
        return used

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> None:
        after = self._now()
        self.used = {name: after[name] - self._before[name] for name in after}


class StatementStats:
    """pg_stat_statements of the bench database: what the pipeline asks PostgreSQL."""

    def __init__(self, app, enabled: bool):
        self.app = app
        self.enabled = enabled
        if enabled:
            self._run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _run(self, sql: str) -> list:
        from sqlalchemy import text

        from stampweb.extensions import db

        with self.app.app_context():
            result = db.session.execute(text(sql))
            rows = result.all() if result.returns_rows else []
            db.session.commit()
            return rows

    def reset(self) -> None:
        if self.enabled:
            self._run("SELECT pg_stat_statements_reset()")

    def top(self, limit: int, by: str = "calls") -> list[tuple[int, float, str]]:
        """(calls, total ms, statement) of this database, most called (or costly) first."""
        if not self.enabled:
            return []
        order = {"calls": "calls", "time": "total_exec_time"}[by]
        return [tuple(row) for row in self._run(
            "SELECT calls, total_exec_time, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            f"ORDER BY {order} DESC LIMIT {int(limit)}"
        )]

    def total_calls(self) -> int:
        if not self.enabled:
            return 0
        rows = self._run(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return int(rows[0][0])


# --- the measurement --------------------------------------------------------------------


def wait_for_workers(app, count: int, timeout: float = 60.0) -> None:
    from rq import Worker

    from stampweb.extensions import redis_client

    deadline = time.monotonic() + timeout
    with app.app_context():
        while time.monotonic() < deadline:
            if len(Worker.all(connection=redis_client())) >= count:
                return
            time.sleep(0.2)
    raise RuntimeError(f"{count} workers did not register with Redis in {timeout:.0f} s")


def run_campaign(app, merchant_id: int, campaign_id: int, expected: int, sink: Sink,
                 workers: Workers, cpu: CpuMeter, timeout: float) -> dict:
    """Start the campaign, then poll the sink and the campaign row until all is sent."""
    from sqlalchemy import func, select

    from stampweb.campaigns import sending
    from stampweb.extensions import db, redis_client
    from stampweb.models.campaigns import Campaign, Message
    from stampweb.tasks.queues import BULK, get_queue
    from stampweb.tenancy import tenant

    peaks = RssPeaks([proc.pid for proc in workers.processes])
    timeline: list[tuple[float, int, int]] = []
    fanout_done_s = None
    status = "sending"
    with app.app_context(), tenant(merchant_id):
        bulk = get_queue(BULK, redis_client())
        cpu.start()
        began = time.monotonic()
        sending.start(campaign_id)
        deadline = began + timeout
        next_report = began + 10
        while time.monotonic() < deadline:
            time.sleep(SAMPLE_POLL_S)
            peaks.sample()
            now = time.monotonic()
            count = sink.count
            timeline.append((now - began, count, len(bulk)))
            campaign = db.session.get(Campaign, campaign_id)
            status = campaign.status
            if fanout_done_s is None and campaign.fanout_done:
                fanout_done_s = now - began
            db.session.rollback()
            if now >= next_report:
                print(f"  {now - began:6.1f} s: {count} sent, {len(bulk)} jobs queued, "
                      f"worker+horse {peaks.tree:.0f} MB", flush=True)
                next_report = now + 10
            if not workers.alive():
                raise RuntimeError("a worker exited; see its log")
            if status == "sent":
                break
            if status != "sending":
                raise RuntimeError(f"campaign became {status}: {campaign.paused_reason}")
        cpu.stop()
        from rq.registry import FailedJobRegistry, FinishedJobRegistry

        jobs = {"finished": FinishedJobRegistry(queue=bulk).count,
                "failed": FailedJobRegistry(queue=bulk).count, "queued": len(bulk)}
        outcome = dict(db.session.execute(
            select(Message.status, func.count(Message.id))
            .where(Message.campaign_id == campaign_id).group_by(Message.status)
        ).all())
        campaign = db.session.get(Campaign, campaign_id)
        finished_s = (campaign.finished_at - campaign.started_at).total_seconds() \
            if campaign.finished_at else None
    sent = sink.count
    first_s = sink.first - began if sent else None
    last_s = sink.last - began if sent else None
    return {
        "sent_at_sink": sent,
        "outbox": outcome,
        "status": status,
        "timed_out": sent < expected or status != "sent",
        "first_message_s": first_s,
        "last_message_s": last_s,
        "fanout_done_s": fanout_done_s,
        "finished_s": finished_s,
        "msgs_per_s": sent / last_s if last_s else 0.0,
        "steady_msgs_per_s": _steady_rate(timeline, sent),
        "peaks": peaks,
        "jobs": jobs,
        "max_queued": max((q for _t, _c, q in timeline), default=0),
        "timeline": timeline,
    }


def _steady_rate(timeline: list[tuple[float, int, int]], total: int) -> float:
    """The rate between 10 % and 90 % of the messages: no start-up, no tail."""
    low = next(((t, c) for t, c, _q in timeline if c >= total * 0.1), None)
    high = next(((t, c) for t, c, _q in timeline if c >= total * 0.9), None)
    if not low or not high or high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


def fallback_sample() -> bytes:
    """A multipart message of a campaign's usual size, if the campaign sent none."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "Bench Cafe <stampweb@bench.test>"
    msg["To"] = "guest0@bench.test"
    msg["Subject"] = "Hi Guest0, 7 stamps to go"
    msg.set_content("Two for one at A free coffee.\n" * 20)
    msg.add_alternative("<p><strong>Two for one</strong> at A free coffee.</p>\n" * 60,
                        subtype="html")
    return msg.as_bytes()


def measure_ceiling(sink: Sink, sample: bytes, count: int) -> dict:
    """Prebuilt copies of `sample` over one smtplib connection: the sink's rate for us."""
    sample = sample.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    header, _sep, body = sample.partition(b"\r\n\r\n")
    lines = [line for line in header.split(b"\r\n") if not line.lower().startswith(b"to:")]
    messages = [
        (f"guest{n}@bench.test",
         b"\r\n".join([*lines, f"To: guest{n}@bench.test".encode()]) + b"\r\n\r\n" + body)
        for n in range(count)
    ]
    sink.reset()
    began = time.monotonic()
    smtp = smtplib.SMTP("127.0.0.1", sink.port, timeout=30)
    smtp.ehlo()
    for to, data in messages:
        smtp.sendmail("stampweb@bench.test", [to], data)
    smtp.quit()
    elapsed = time.monotonic() - began
    if sink.count != count:
        raise RuntimeError(f"ceiling: the sink counted {sink.count} of {count} messages")
    return {"msgs_per_s": count / elapsed, "seconds": elapsed, "bytes": len(messages[0][1])}


def tear_down(workers, sink, backends, workdir: Path, *, keep: bool) -> None:
    """Stop what a bench started (any of it may be None if setup failed) and
    remove its directory unless --keep asked to look at it."""
    if workers is not None:
        workers.stop()
    if sink is not None:
        sink.stop()
    backends.stop()
    if keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the campaign")
    parser.add_argument("--ceiling-messages", type=int, default=20_000)
    parser.add_argument("--sqlite", action="store_true",
                        help="the embedded SQLite + Redis of `make run` instead of PostgreSQL")
    parser.add_argument("--durable", action="store_true",
                        help="PostgreSQL with fsync and synchronous_commit on")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs)")
    args = parser.parse_args()

    sys.path.insert(0, str(PROJECT_ROOT))
    workdir = Path(tempfile.mkdtemp(prefix="stampweb-bench-campaign-"))
    instance = workdir / "instance"
    instance.mkdir()
    backends = Backends(instance, args.sqlite, args.durable)
    sink = workers = None
    try:
        t0 = time.monotonic()
        sink = Sink(workdir).start()
        env = process_env(backends.start(), sink.port)
        app = migrated_app(env)
        t_seed = time.monotonic()
        merchant_id, campaign_id = seed(app, args.customers)
        seed_s = time.monotonic() - t_seed
        workers = Workers(env, workdir)
        workers.start(args.workers)
        wait_for_workers(app, args.workers)
        setup_s = time.monotonic() - t0
        database = "SQLite (embedded)" if args.sqlite else (
            "PostgreSQL" + (" (durable)" if args.durable else " (fsync off)"))
        print(f"setup: {setup_s:.1f} s ({database}; {args.customers} customers and cards "
              f"inserted in {seed_s:.1f} s; {args.workers} workers up)", flush=True)

        statements = StatementStats(app, backends.statement_stats)
        statements.reset()
        load_before = os.getloadavg()[0]
        cpu = CpuMeter({"workers": [proc.pid for proc in workers.processes],
                        **backends.pids(), "sink": [sink.pid]})
        result = run_campaign(app, merchant_id, campaign_id, args.customers, sink, workers,
                              cpu, args.timeout)
        load_after = os.getloadavg()[0]
        statement_calls = statements.total_calls()
        top_statements = statements.top(12), statements.top(4, by="time")
        peaks = result["peaks"]
        workers.stop()
        sample = sink.sample() or fallback_sample()
        ceiling_cpu = CpuMeter({"sink": [sink.pid]})
        ceiling_cpu.start()
        ceiling = measure_ceiling(sink, sample, args.ceiling_messages)
        ceiling_cpu.stop()
    finally:
        tear_down(workers, sink, backends, workdir, keep=args.keep)

    def secs(value) -> str:
        return "-" if value is None else f"{value:.1f} s"

    print(f"campaign: {result['sent_at_sink']} of {args.customers} messages at the sink, "
          f"campaign {result['status']}, outbox {result['outbox']}"
          + (" (TIMED OUT)" if result["timed_out"] else ""))
    print(f"  first message {secs(result['first_message_s'])}, fan-out done "
          f"{secs(result['fanout_done_s'])}, last message {secs(result['last_message_s'])}, "
          f"campaign marked sent {secs(result['finished_s'])} after start")
    from stampweb.campaigns.sending import SEND_BATCH_SIZE

    jobs = result["jobs"]
    print(f"  bulk jobs: {jobs['finished']} finished, {jobs['failed']} failed, "
          f"{jobs['queued']} still queued (at most {result['max_queued']} waiting at once); "
          f"one fan-out plus {-(-args.customers // SEND_BATCH_SIZE)} send batches would do")
    print(f"  end to end {result['msgs_per_s']:.0f} msg/s; steady (10-90 %) "
          f"{result['steady_msgs_per_s']:.0f} msg/s")
    print(f"  peak RSS: worker {peaks.worker:.0f} MB, work-horse {peaks.horse:.0f} MB, "
          f"worker with all its children {peaks.tree:.0f} MB")
    sent = max(result["sent_at_sink"], 1)
    per_message = {name: used / sent * 1000 for name, used in cpu.used.items()}
    print("  CPU per message: " + ", ".join(f"{name} {ms:.2f} ms"
                                            for name, ms in per_message.items())
          + f"; total {sum(per_message.values()):.2f} ms on {os.cpu_count()} cores")
    if statement_calls:
        print(f"  PostgreSQL statements per message: {statement_calls / sent:.1f} "
              "(BEGIN and COMMIT included); per message, mean time, statement:")
        for title, rows in zip(("most frequent", "most time in total"), top_statements,
                               strict=True):
            print(f"   {title}:")
            for calls, total_ms, query in rows:
                print(f"    {calls / sent:6.2f}/msg {total_ms / calls:7.3f} ms  "
                      f"{' '.join(query.split())[:100]}")
    print(f"  load average (1 min) {load_before:.1f} before, {load_after:.1f} after: "
          "other work on this machine slows every figure")
    print(f"ceiling: plain smtplib, one connection, {args.ceiling_messages} prebuilt "
          f"{ceiling['bytes']}-byte messages: {ceiling['msgs_per_s']:.0f} msg/s; CPU per "
          "message: " + ", ".join(f"{name} {used / args.ceiling_messages * 1000:.2f} ms"
                                  for name, used in ceiling_cpu.used.items()))
    ratio = result["msgs_per_s"] / ceiling["msgs_per_s"] if ceiling["msgs_per_s"] else 0.0
    summary = {
        "customers": args.customers,
        "workers": args.workers,
        "database": "sqlite" if args.sqlite else "postgresql",
        "sent": result["sent_at_sink"],
        "msgs_per_s": round(result["msgs_per_s"], 1),
        "steady_msgs_per_s": round(result["steady_msgs_per_s"], 1),
        "ceiling_msgs_per_s": round(ceiling["msgs_per_s"], 1),
        "ratio": round(ratio, 3),
        "first_message_s": None if result["first_message_s"] is None
        else round(result["first_message_s"], 2),
        "fanout_done_s": None if result["fanout_done_s"] is None
        else round(result["fanout_done_s"], 1),
        "peak_rss_mb": round(peaks.tree, 1),
        "peak_worker_rss_mb": round(peaks.worker, 1),
        "peak_horse_rss_mb": round(peaks.horse, 1),
        "cpu_ms_per_msg": {name: round(ms, 2) for name, ms in per_message.items()},
        "bulk_jobs": jobs["finished"] + jobs["failed"] + jobs["queued"],
        "sql_per_msg": round(statement_calls / sent, 1) if statement_calls else None,
        "target_met": (not result["timed_out"] and result["msgs_per_s"] >= 500
                       and ratio >= 0.5),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
