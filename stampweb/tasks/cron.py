"""The `rq cron` table: `rq cron stampweb.tasks.cron` (make run starts it).

Each entry is a thin job; the work it does is idempotent, so a double run or a
catch-up after downtime never sends anything twice.
"""

from rq import cron

from .maintenance import heartbeat
from .queues import DEFAULT

cron.register(heartbeat, DEFAULT, interval=60, job_timeout=30, result_ttl=300)
