"""Profile: CPU per message of one campaign send batch, in this process.

    .venv/bin/python bench/send_batch_profile.py [--batch 300] [--batches 3] [--top 30]

bench/campaign.py measures the whole pipeline, which the machine's load
distorts; this measures the part the worker spends per message, which does
not depend on load: `sending.send_batch()` called in-process on PostgreSQL
(tests/servers.py, fsync off) against the same lean SMTP sink in its own
process. It prints the CPU milliseconds per message of this process
(time.process_time), of PostgreSQL and of the sink, then cProfile's top
functions by cumulative and by own time for one batch.

This machine's speed drifts by a third from one minute to the next (other
tenants of the host), and every process's CPU time drifts with it. The sink
does the same work per message whatever the code under test does, so
worker/sink and postgres/sink are the figures to compare between two
versions: run them alternately, a few times each.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench.campaign import (  # noqa: E402
    Backends,
    Sink,
    migrated_app,
    process_env,
    seed,
    tree_cpu_s,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--batches", type=int, default=3, help="timed batches (one more profiled)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="stampweb-bench-profile-"))
    instance = workdir / "instance"
    instance.mkdir()
    backends = Backends(instance, sqlite=False, durable=False)
    sink = None
    try:
        sink = Sink(workdir).start()
        app = migrated_app(process_env(backends.start(), sink.port))
        customers = args.batch * (args.batches + 2)
        merchant_id, campaign_id = seed(app, customers)
        with app.app_context():
            run(app, merchant_id, campaign_id, args, sink, backends.pids()["postgres"][0])
    finally:
        if sink is not None:
            sink.stop()
        backends.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(app, merchant_id: int, campaign_id: int, args, sink, postgres_pid: int) -> None:
    from sqlalchemy import select, text

    from stampweb.campaigns import outbox, sending
    from stampweb.extensions import db
    from stampweb.models import Customer
    from stampweb.models.campaigns import CAMPAIGN_SENDING, Campaign, Message
    from stampweb.tenancy import tenant

    with tenant(merchant_id):
        # The fan-out without the queue: materialise everyone, then send batches here.
        campaign = db.session.get(Campaign, campaign_id)
        campaign.status = CAMPAIGN_SENDING
        db.session.commit()
        customer_ids = list(db.session.scalars(select(Customer.id).order_by(Customer.id)))
        outbox.materialise(merchant_id, campaign_id, customer_ids, ["email"])
        db.session.commit()
        ids = list(db.session.scalars(
            select(Message.id).where(Message.campaign_id == campaign_id).order_by(Message.id)))
        # Statistics, as autovacuum gathers them a minute into a real campaign.
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        db.session.close()
        batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]

        # The first batch in a forked child, as an RQ work-horse runs it (the
        # job wrapper's fresh app context and connections, cold templates).
        pid = os.fork()
        if pid == 0:
            try:
                from stampweb.tasks.campaigns import send_batch_job
                from stampweb.tasks.queues import set_worker_app

                set_worker_app(app)
                os._exit(0 if send_batch_job(merchant_id, campaign_id, batches[0])["sent"]
                         else 1)
            except BaseException:
                import traceback

                traceback.print_exc()
                os._exit(2)
        _pid, status, usage = os.wait4(pid, 0)
        child_cpu = usage.ru_utime + usage.ru_stime
        print(f"first batch in a forked work-horse (exit {status >> 8}): "
              f"{child_cpu * 1000:.0f} ms CPU, {child_cpu / len(batches[0]) * 1000:.2f} ms/msg")

        cpu = wall = 0.0
        sent = 0
        postgres_cpu, sink_cpu = tree_cpu_s(postgres_pid), tree_cpu_s(sink.pid)
        for batch in batches[1:1 + args.batches]:
            c0, w0 = time.process_time(), time.perf_counter()
            outcome = sending.send_batch(campaign_id, batch)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            sent += outcome["sent"]
            db.session.close()
        postgres_cpu = tree_cpu_s(postgres_pid) - postgres_cpu
        sink_cpu = tree_cpu_s(sink.pid) - sink_cpu
        print(f"{sent} messages in {args.batches} batches of {args.batch}: "
              f"{cpu / sent * 1000:.2f} ms CPU/msg, {wall / sent * 1000:.2f} ms wall/msg "
              f"({sent / wall:.0f} msg/s for one process)")
        print(f"CPU per message: this process {cpu / sent * 1000:.3f} ms, PostgreSQL "
              f"{postgres_cpu / sent * 1000:.3f} ms, sink {sink_cpu / sent * 1000:.3f} ms; "
              f"worker/sink {cpu / sink_cpu:.3f}, postgres/sink {postgres_cpu / sink_cpu:.3f}")

        profile = cProfile.Profile(time.process_time)
        batch = batches[1 + args.batches]
        profile.enable()
        outcome = sending.send_batch(campaign_id, batch)
        profile.disable()
        db.session.close()
        print(f"profiled batch: {outcome}; sink has {sink.count}")
        stats = pstats.Stats(profile)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
