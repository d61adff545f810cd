"""gunicorn settings: one place for `make run`, production and bench/stamp.py.

gunicorn reads ./gunicorn.conf.py when it starts in the project directory
(`flask --app app run-all` and the bench do); elsewhere pass
`-c /path/to/gunicorn.conf.py`. Options given on the command line win.

- One worker process per core: the app is CPU-bound Python, and threads of
  one process share one interpreter lock, so more processes than cores only
  add switching and fewer leave a core idle. WEB_CONCURRENCY overrides it.
- A few threads per process (GUNICORN_THREADS) let a request that waits on
  the database or Redis overlap with one that computes.
- Idle keep-alive connections cost a gthread worker nothing (they wait in its
  poller, not on a thread), and a staff phone that taps again within the
  window skips the TCP (and, behind a proxy, TLS) handshake.
"""

import os


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


bind = [f"0.0.0.0:{os.environ.get('PORT', '5000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY") or _cores())
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 4)
keepalive = 20
accesslog = "-"
