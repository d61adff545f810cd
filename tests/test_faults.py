"""The fault suite: the send pipeline when things break, on real servers.

Each test runs a campaign through private PostgreSQL and Redis, real
`flask worker` processes (forking RQ workers) and an aiosmtpd sink, breaks one
thing (RELIABILITY.md checklist 9-12), and ends by reading the message log:
every targeted customer has exactly one final status (sent, failed, unknown, or
skipped with its reason), and no recipient had two messages accepted by the
SMTP server. The log is printed, so a failure shows what happened to whom.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta

import pytest
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from sqlalchemy import select, update

from stampweb import config as config_module
from stampweb.campaigns import message_log, outbox, sending
from stampweb.extensions import db, redis_client
from stampweb.models import Customer, Merchant, utcnow
from stampweb.models.campaigns import Campaign, Message, MessageEvent
from stampweb.tasks.queues import BULK, get_queue
from stampweb.tenancy import tenant

from . import servers
from .conftest import PROJECT_ROOT, VENV_BIN, WorkerProcesses, app_env, wait_until
from .factories import csrf_token_from, gen_merchant, login
from .test_campaign_sending import make_campaign, opted_in

FINAL_STATES = {"sent", "failed", "unknown", "skipped"}
REDIS_OUTAGE_SECONDS = 5


# --- fixtures and helpers -------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`. An RQ work-horse runs in its own process group
    (os.setpgrp), so killing the worker's group would not reach it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it forked."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


@pytest.fixture
def spawn(mail_app):
    """Start `flask worker`s (`spawn.workers(n, **env)`) or `flask cron` (`spawn.cron(**env)`)
    on the test's database, Redis and SMTP sink. All are killed after the test."""

    class Spawner:
        def __init__(self):
            self.processes: list[subprocess.Popen] = []

        def env(self, **extra) -> dict:
            return app_env(mail_app, **{k: str(v) for k, v in extra.items()})

        def workers(self, count: int = 1, **extra) -> WorkerProcesses:
            procs = WorkerProcesses(self.env(**extra))
            procs.start(count)
            self.processes.extend(procs.processes)
            return procs

        def cron(self, **extra) -> subprocess.Popen:
            proc = subprocess.Popen(
                [str(VENV_BIN / "flask"), "--app", "app", "cron"],
                cwd=PROJECT_ROOT, env=self.env(**extra), start_new_session=True,
            )
            self.processes.append(proc)
            return proc

    spawner = Spawner()
    yield spawner
    # The test is over: no graceful shutdown to wait for.
    for proc in spawner.processes:
        _kill_tree(proc)


def campaign_to(app, count: int, **campaign_fields) -> tuple[int, list[int], int]:
    """A merchant, `count` opted-in customers and a draft email campaign to all of them."""
    with app.app_context():
        merchant = gen_merchant()
        customers = opted_in(merchant, count)
        return merchant.id, customers, make_campaign(merchant.id, **campaign_fields)


def emails_of(app, merchant_id: int) -> dict[int, str]:
    with app.app_context(), tenant(merchant_id):
        return dict(db.session.execute(select(Customer.id, Customer.email)).all())


def campaign_status(app, merchant_id: int, campaign_id: int) -> str:
    with app.app_context(), tenant(merchant_id):
        return db.session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))


def wait_for_status(app, merchant_id, campaign_id, status, timeout=60.0) -> None:
    wait_until(lambda: campaign_status(app, merchant_id, campaign_id) == status,
               timeout=timeout, message=f"campaign {status}")


def open_rows(app, merchant_id: int, campaign_id: int) -> int:
    """Rows still being worked on: `sending`, or `pending` and due."""
    with app.app_context(), tenant(merchant_id):
        return len(db.session.scalars(
            select(Message.id).where(
                Message.campaign_id == campaign_id,
                (Message.status == "sending")
                | ((Message.status == "pending") & (Message.next_attempt_at <= utcnow())),
            )
        ).all())


def counts_of(app, merchant_id: int, campaign_id: int) -> dict[str, int]:
    with app.app_context(), tenant(merchant_id):
        return outbox.counts(campaign_id)


def reconcile(app, merchant_id: int, now=None) -> dict:
    """What the reconciler cron job does, run here at a chosen time: re-enqueue at once."""
    with app.app_context(), tenant(merchant_id):
        return sending.reconcile(now=now, stale_after=timedelta(0))


def message_log_says(app, merchant_id: int, campaign_id: int, targeted: list[int],
                     sink: servers.SmtpSink, *, one_data_each: bool = False) -> dict[int, str]:
    """Read the campaign's message log and check it accounts for every recipient.

    Every targeted customer appears exactly once, in a final state with its
    reason; the sink accepted at most one message per recipient, exactly one
    for each `sent` row and none for `failed` or `skipped` ones. With
    `one_data_each`, no recipient even had a second DATA transaction begun.
    Returns {customer id: status}; prints the log.
    """
    rows = []
    before = None
    with app.app_context():
        while True:
            page = message_log.search_messages(
                merchant_id, message_log.LogFilters(campaign_id=campaign_id),
                before=before, limit=200,
            )
            rows.extend(page.rows)
            if page.next_before is None:
                break
            before = page.next_before
    accepted = sink.accepted_by_recipient()
    attempts = sink.data_attempts_by_recipient()
    print(f"\nmessage log of campaign {campaign_id}:")
    for row in sorted(rows, key=lambda r: r.message.id):
        m = row.message
        why = m.skip_reason or m.last_error or ""
        email = (row.customer.email if row.customer else m.to_address or "").lower()
        print(f"  {email:28} {m.status:8} attempts={m.attempts} "
              f"accepted={accepted[email]} data={attempts[email]} {why}")
    seen = Counter(row.message.customer_id for row in rows)
    assert sorted(seen) == sorted(targeted), "the log misses or adds a recipient"
    assert set(seen.values()) == {1}, "a recipient has more than one outbox row"
    statuses = {}
    for row in rows:
        m, email = row.message, row.customer.email.lower()
        statuses[m.customer_id] = m.status
        assert m.status in FINAL_STATES, f"{email} is still {m.status}"
        if m.status == "skipped":
            assert m.skip_reason, f"{email} skipped without a reason"
        if m.status == "sent":
            assert not m.last_error, f"{email} is sent but still shows an error"
        if m.status in ("failed", "unknown"):
            assert m.last_error, f"{email} is {m.status} without an error"
        expected = {"sent": {1}, "failed": {0}, "skipped": {0}, "unknown": {0, 1}}[m.status]
        assert accepted[email] in expected, (
            f"{email} is {m.status} but the server accepted {accepted[email]} message(s)")
        if one_data_each:
            assert attempts[email] <= 1, f"{email} had {attempts[email]} DATA transactions"
    return statuses


def _work_horse(worker_pid: int) -> int:
    """The work-horse a worker forked for the running job: its youngest child
    (the older one is RQ's scheduler, started with the worker)."""
    children = []
    for pid in _descendants(worker_pid):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker_pid:
            children.append((int(fields[19]), pid))  # (start time, pid)
    assert children, "the worker has no child process"
    return max(children)[1]


# --- a worker lost mid-batch --------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["work-horse killed", "whole worker killed",
                                   "stalled past its lease"])
def test_worker_lost_mid_batch_misses_nobody_and_sends_nobody_twice(
    mail_app, smtp, spawn, fault
):
    """While a message is inside DATA the work-horse is SIGKILLed (the worker
    goes on), or the worker with its horse (a restart follows), or the horse
    stalls until its lease has run out. The reconciler (run here past the
    lease) calls the in-flight row unknown and re-enqueues the rest: every
    customer gets exactly one message but the ambiguous one, and a stalled
    batch that wakes up sends none of the rows it lost."""
    mid, customers, campaign_id = campaign_to(mail_app, 12)
    # Four messages go through, the fifth hangs on the wire until released.
    smtp.fail_next(4, mode="ok")
    smtp.fail_next(1, mode="hang")
    with mail_app.app_context(), tenant(mid):
        sending.start(campaign_id)
    # A socket timeout longer than the stall: the stalled horse must wake up
    # to a 250, not give up on its own.
    workers = spawn.workers(1, MAIL_TIMEOUT=120, SEND_JOB_TIMEOUT=300)
    wait_until(lambda: smtp.hanging >= 1, timeout=60, message="a hung DATA")
    [worker] = workers.processes
    if fault == "work-horse killed":
        # What the OOM killer does: the worker sees its horse die and goes on.
        os.kill(_work_horse(worker.pid), signal.SIGKILL)
    elif fault == "whole worker killed":
        # The machine or container goes: worker, horse and scheduler at once.
        _kill_tree(worker)
    report = reconcile(mail_app, mid, now=utcnow() + outbox.LEASE + timedelta(seconds=1))
    assert report["unknown"] == 1 and report["released"] == 12 - 5
    if fault != "work-horse killed":
        spawn.workers(1)  # restarted, or a second worker takes the released rows
    wait_for_status(mail_app, mid, campaign_id, "sent")
    if fault == "stalled past its lease":
        # The stalled horse hears 250 for its message and then finds its
        # lease gone: it records what it knows and sends nothing more.
        smtp.release()
        with mail_app.app_context():
            started = StartedJobRegistry(queue=get_queue(BULK, redis_client()))
            wait_until(lambda: started.count == 0, timeout=30,
                       message="the stalled batch to end")
        wait_until(lambda: _status(mail_app, mid, customers[4]) == "sent",
                   timeout=30, message="the stalled message recorded")
        expected = {"sent": 12}
    else:
        smtp.release()  # its client is gone: the sink drops the transaction
        expected = {"sent": 11, "unknown": 1}
    statuses = message_log_says(mail_app, mid, campaign_id, customers, smtp,
                                one_data_each=True)
    assert Counter(statuses.values()) == expected


# --- Redis restarted, its queue lost ------------------------------------------------------


@pytest.mark.integration
def test_redis_restart_loses_the_queue_and_the_reconciler_completes_the_campaign(
    mail_app, smtp, spawn, redis_server, monkeypatch
):
    """Redis without persistence restarts mid-campaign: every queued send job is
    gone. `flask cron` rides out the restart (rq's own `rq cron` exits on it), its
    reconciler re-enqueues the pending rows and the campaign completes with
    nobody sent twice."""
    if redis_server.external:
        pytest.skip("TEST_REDIS_URL is an external Redis; the suite may not restart it")
    mid, customers, campaign_id = campaign_to(mail_app, 30)
    # Batches of 5 so that several jobs wait in the queue when Redis goes.
    monkeypatch.setattr(sending, "SEND_BATCH_SIZE", 5)
    smtp.fail_next(1, mode="hang")
    with mail_app.app_context(), tenant(mid):
        sending.start(campaign_id)
        sending.fanout(campaign_id)
        assert len(get_queue(BULK, redis_client())) >= 6
    settings = {"RECONCILE_INTERVAL_SECONDS": 1, "RECONCILE_STALE_SECONDS": 3}
    cron = spawn.cron(**settings)
    workers = spawn.workers(1, **settings)
    wait_until(lambda: smtp.hanging >= 1, timeout=60, message="the first batch on the wire")
    # Down for a few seconds, as a restart with a large dataset is: longer than
    # redis-py's own retries, so every client sees the outage.
    redis_server.kill()
    time.sleep(REDIS_OUTAGE_SECONDS)
    redis_server.start()
    with mail_app.app_context():
        assert len(get_queue(BULK, redis_client())) == 0, "the restart kept the queue"
    smtp.release()  # the batch in flight finishes against the new, empty Redis

    def sent_while_all_run() -> bool:
        assert cron.poll() is None, "cron died with the Redis restart"
        assert all(p.poll() is None for p in workers.processes), "a worker died"
        return campaign_status(mail_app, mid, campaign_id) == "sent"

    wait_until(sent_while_all_run, timeout=90, message="campaign sent")
    statuses = message_log_says(mail_app, mid, campaign_id, customers, smtp,
                                one_data_each=True)
    assert set(statuses.values()) == {"sent"}


# --- SMTP 451 and 550 ---------------------------------------------------------------------


def _pull_retries_forward(app, merchant_id: int, campaign_id: int) -> None:
    """Let the back-off pass: pending rows become due now, and are enqueued."""
    with app.app_context(), tenant(merchant_id):
        db.session.execute(
            update(Message)
            .where(Message.campaign_id == campaign_id, Message.status == "pending")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
    reconcile(app, merchant_id)


def _row(app, merchant_id: int, customer_id: int) -> Message | None:
    with app.app_context(), tenant(merchant_id):
        return db.session.scalar(select(Message).where(Message.customer_id == customer_id))


def _status(app, merchant_id: int, customer_id: int) -> str | None:
    row = _row(app, merchant_id, customer_id)
    return None if row is None else row.status


@pytest.mark.integration
def test_smtp_451_is_retried_with_back_off_then_given_up(mail_app, smtp, spawn):
    """451 at DATA: the row waits 1, 5, 30 minutes between attempts; a mailbox that
    recovers gets its message once, one that never does fails after MAX_ATTEMPTS
    without being suppressed."""
    mid, customers, campaign_id = campaign_to(mail_app, 2)
    deferred, recovers = customers
    emails = emails_of(mail_app, mid)
    smtp.tempfail_addresses = {emails[deferred], emails[recovers]}
    spawn.workers(1)
    began = utcnow()
    with mail_app.app_context(), tenant(mid):
        sending.start(campaign_id)
    for attempt in range(1, outbox.MAX_ATTEMPTS + 1):
        wait_until(lambda n=attempt: open_rows(mail_app, mid, campaign_id) == 0
                   and getattr(_row(mail_app, mid, deferred), "attempts", 0) == n,
                   timeout=60, message=f"attempt {attempt}")
        row = _row(mail_app, mid, deferred)
        if attempt < outbox.MAX_ATTEMPTS:
            assert row.status == "pending" and "451" in row.last_error
            delay = outbox.RETRY_DELAYS[attempt - 1]
            assert row.next_attempt_at >= began + delay, f"back-off after attempt {attempt}"
        if attempt == 1:
            assert _row(mail_app, mid, recovers).status == "pending"
            smtp.tempfail_addresses = {emails[deferred]}
        if attempt < outbox.MAX_ATTEMPTS:
            began = utcnow()
            _pull_retries_forward(mail_app, mid, campaign_id)
    wait_for_status(mail_app, mid, campaign_id, "sent")
    statuses = message_log_says(mail_app, mid, campaign_id, customers, smtp)
    assert statuses == {deferred: "failed", recovers: "sent"}
    row = _row(mail_app, mid, deferred)
    assert row.last_error.startswith(f"gave up after {outbox.MAX_ATTEMPTS} attempts")
    attempts = smtp.data_attempts_by_recipient()
    assert attempts[emails[deferred].lower()] == outbox.MAX_ATTEMPTS
    assert attempts[emails[recovers].lower()] == 2
    with mail_app.app_context(), tenant(mid):
        history = db.session.scalars(
            select(MessageEvent.status).where(MessageEvent.message_id == row.id)
            .order_by(MessageEvent.id)).all()
        assert history == ["retry"] * (outbox.MAX_ATTEMPTS - 1) + ["failed"]
        # A mailbox that is only slow is not a bad address.
        assert db.session.get(Customer, deferred).email_suppressed_at is None


@pytest.mark.integration
def test_smtp_550_is_a_permanent_failure_and_suppresses_the_address(mail_app, smtp, spawn):
    """550 at RCPT: the row fails at once (no retry), the customer is suppressed,
    and the next campaign skips them as suppressed."""
    mid, customers, campaign_id = campaign_to(mail_app, 3)
    bounce = customers[1]
    emails = emails_of(mail_app, mid)
    smtp.reject_addresses = {emails[bounce]}
    spawn.workers(1)
    with mail_app.app_context(), tenant(mid):
        sending.start(campaign_id)
    wait_for_status(mail_app, mid, campaign_id, "sent")
    statuses = message_log_says(mail_app, mid, campaign_id, customers, smtp)
    assert statuses == {c: ("failed" if c == bounce else "sent") for c in customers}
    row = _row(mail_app, mid, bounce)
    assert row.attempts == 1 and "550" in row.last_error
    with mail_app.app_context(), tenant(mid):
        assert db.session.get(Customer, bounce).email_suppressed_at is not None
        smtp.clear()
        second = make_campaign(mid)
        sending.start(second)
    wait_for_status(mail_app, mid, second, "sent")
    with mail_app.app_context(), tenant(mid):
        skipped = db.session.execute(
            select(Message.status, Message.skip_reason)
            .where(Message.campaign_id == second, Message.customer_id == bounce)).one()
    assert tuple(skipped) == ("skipped", "suppressed")
    message_log_says(mail_app, mid, second, customers, smtp)


# --- a hung SMTP server -------------------------------------------------------------------


def test_mail_timeout_must_leave_room_inside_the_send_job_timeout(monkeypatch):
    defaults = config_module.load_from_environment()
    assert 2 * defaults["MAIL_TIMEOUT"] < defaults["SEND_JOB_TIMEOUT"]
    # RQ ends a batch before its claim on its rows runs out.
    assert defaults["SEND_JOB_TIMEOUT"] < outbox.LEASE.total_seconds()
    monkeypatch.setenv("MAIL_TIMEOUT", "600")
    with pytest.raises(ValueError, match="MAIL_TIMEOUT"):
        config_module.load_from_environment()


@pytest.mark.integration
def test_hung_smtp_server_hits_the_socket_timeout_before_the_job_timeout(
    mail_app, smtp, spawn
):
    """The server reads a whole message and never answers. With MAIL_TIMEOUT=1 and
    SEND_JOB_TIMEOUT=10 the socket timeout ends the wait: the batch records the
    row `unknown` (the server may have it), gives the rest back and finishes as
    a job (RQ never had to kill it); the reconciler sends the rest."""
    mid, customers, campaign_id = campaign_to(mail_app, 3)
    smtp.fail_next(1, mode="hang")
    spawn.workers(1, MAIL_TIMEOUT=1, SEND_JOB_TIMEOUT=10)
    with mail_app.app_context(), tenant(mid):
        sending.start(campaign_id)
    wait_until(lambda: _status(mail_app, mid, customers[0]) == "unknown",
               timeout=60, message="the hung row recorded")
    with mail_app.app_context():
        bulk = get_queue(BULK, redis_client())

        def send_jobs():
            jobs = [bulk.fetch_job(i) for i in FinishedJobRegistry(queue=bulk).get_job_ids()]
            return [j for j in jobs if j and j.func_name.endswith("send_batch_job")]

        wait_until(send_jobs, timeout=30, message="the send job finished")
        [job] = send_jobs()
        # The limit RQ enforced came from the worker's configuration.
        assert job.timeout == 10
        assert job.return_value()["unknown"] == 1
        assert FailedJobRegistry(queue=bulk).count == 0
    row = _row(mail_app, mid, customers[0])
    assert "timed out" in row.last_error and "DATA" in row.last_error
    # The other two went back to pending for a later batch.
    reconcile(mail_app, mid)
    wait_for_status(mail_app, mid, campaign_id, "sent")
    statuses = message_log_says(mail_app, mid, campaign_id, customers, smtp,
                                one_data_each=True)
    assert statuses == {customers[0]: "unknown", customers[1]: "sent", customers[2]: "sent"}


# --- an error burst auto-pauses the campaign ----------------------------------------------


@pytest.mark.integration
def test_error_burst_pauses_the_campaign_with_its_reason_shown(mail_app, smtp, spawn):
    """A server refusing four recipients in five: the batch stops after
    ERROR_BURST_MIN failures instead of bouncing (and suppressing) everyone, the
    campaign page says why it paused, and after a resume the rest is sent."""
    mid, customers, campaign_id = campaign_to(mail_app, 30)
    emails = emails_of(mail_app, mid)
    smtp.reject_addresses = {emails[c] for i, c in enumerate(customers) if i % 5}
    spawn.workers(1)
    with mail_app.app_context(), tenant(mid):
        sending.start(campaign_id)
    wait_for_status(mail_app, mid, campaign_id, "paused")
    # The batch gives its unsent rows back right after pausing.
    wait_until(lambda: counts_of(mail_app, mid, campaign_id)["sending"] == 0, timeout=30,
               message="the paused batch to give its rows back")
    with mail_app.app_context(), tenant(mid):
        reason = db.session.get(Campaign, campaign_id).paused_reason
    counts = counts_of(mail_app, mid, campaign_id)
    assert reason.startswith("Paused automatically")
    assert counts["failed"] == sending.ERROR_BURST_MIN
    assert counts["pending"] == 30 - counts["failed"] - counts["sent"]
    client = mail_app.test_client()
    login(client, f"owner@{slug_of(mail_app, mid)}.test")
    page = client.get(f"/admin/campaigns/{campaign_id}")
    assert page.status_code == 200
    assert reason in page.text
    # The merchant fixes the mail server and resumes from the page.
    smtp.reject_addresses = set()
    resumed = client.post(f"/admin/campaigns/{campaign_id}/resume",
                          data={"csrf_token": csrf_token_from(page.text)})
    assert resumed.status_code in (302, 303)
    wait_for_status(mail_app, mid, campaign_id, "sent")
    statuses = message_log_says(mail_app, mid, campaign_id, customers, smtp,
                                one_data_each=True)
    assert Counter(statuses.values()) == {"failed": sending.ERROR_BURST_MIN,
                                          "sent": 30 - sending.ERROR_BURST_MIN}


def slug_of(app, merchant_id: int) -> str:
    with app.app_context(), tenant(merchant_id):
        return db.session.get(Merchant, merchant_id).slug
