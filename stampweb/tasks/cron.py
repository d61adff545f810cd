"""The cron table, run by `flask --app app cron` (make run starts it).

Each entry is a thin job; the work it does is idempotent, so a double run or a
catch-up after downtime never sends anything twice.
"""

from rq import cron

from ..config import env_int
from .automations import run_automations
from .campaigns import reconcile_job
from .maintenance import heartbeat, purge_idempotency_records
from .queues import DEFAULT
from .tags import update_rule_tags

cron.register(heartbeat, DEFAULT, interval=60, job_timeout=30, result_ttl=300)
# Starts scheduled campaigns and repairs what a crash or a Redis restart left.
cron.register(reconcile_job, DEFAULT, interval=env_int("RECONCILE_INTERVAL_SECONDS", 60),
              job_timeout=300, result_ttl=300)

# Rule tags ("regular", "lapsed", ...) recomputed hourly, off the top of the hour.
cron.register(update_rule_tags, DEFAULT, cron="7 * * * *", job_timeout=600)

# Automations: every flow fires at its merchant's local hour (catch-up included).
cron.register(run_automations, DEFAULT, cron="*/15 * * * *", job_timeout=900)

# Stored Idempotency-Key answers past their retention (api/idempotency.py).
cron.register(purge_idempotency_records, DEFAULT, cron="41 3 * * *", job_timeout=600)
