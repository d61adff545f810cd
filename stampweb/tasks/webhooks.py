"""Webhook jobs: turn an event into delivery rows, and make one delivery attempt."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app, has_app_context
from rq import Retry

from .. import webhooks
from .queues import DEFAULT, get_queue, job

JOB_OPTIONS = {"job_timeout": 120, "result_ttl": 600, "failure_ttl": 7 * 24 * 3600}


@job
def dispatch_webhook_event(merchant_id: int, event: str, subject_id: int, event_id: str,
                           occurred_at: str) -> int:
    return len(webhooks.dispatch(merchant_id, event, subject_id, event_id, occurred_at))


@job
def deliver_webhook(merchant_id: int, delivery_id: int) -> str | None:
    attempt = webhooks.deliver(merchant_id, delivery_id)
    return attempt.status if attempt else None


def _enqueue(func, *args, delay: float = 0):
    if has_app_context() and current_app.config.get("RQ_SYNC"):
        return func(*args) if not delay else None
    queue = get_queue(DEFAULT)
    # The delivery schedules its own back-off; RQ's retry covers a job that crashed.
    options = {**JOB_OPTIONS, "retry": Retry(max=2, interval=[30, 120])}
    if delay > 0:
        return queue.enqueue_in(timedelta(seconds=delay), func, *args, **options)
    return queue.enqueue(func, *args, **options)


def enqueue_dispatch(merchant_id: int, event: str, subject_id: int, event_id: str,
                     occurred_at: str):
    return _enqueue(dispatch_webhook_event, merchant_id, event, subject_id, event_id,
                    occurred_at)


def enqueue_delivery(merchant_id: int, delivery_id: int, delay: float = 0):
    return _enqueue(deliver_webhook, merchant_id, delivery_id, delay=delay)
