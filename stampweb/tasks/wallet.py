"""Wallet jobs: bring a card's passes up to date, retry pushes APNs was too busy for."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app, has_app_context
from rq import Retry

from ..wallet import updates
from .queues import WALLET, get_queue, job

JOB_OPTIONS = {"job_timeout": 300, "result_ttl": 600, "failure_ttl": 7 * 24 * 3600}


@job
def update_card_wallet(merchant_id: int, card_id: int) -> dict:
    report = updates.update_card(merchant_id, card_id)
    return {"pushed": len(report.pushed), "removed": len(report.removed),
            "retry_later": len(report.retry_later), "google": report.google_updated}


@job
def retry_apns_push(merchant_id: int, card_id: int, tokens: list[str], attempt: int) -> None:
    updates.retry_push(merchant_id, card_id, tokens, attempt)


@job
def sync_google_object(merchant_id: int, card_id: int) -> bool:
    return updates.sync_google_object(merchant_id, card_id)


def _enqueue(func, *args, delay: float = 0, retry: Retry | None = None):
    if has_app_context() and current_app.config.get("RQ_SYNC"):
        return func(*args)
    queue = get_queue(WALLET)
    options = {**JOB_OPTIONS, "retry": retry or Retry(max=3, interval=[10, 60, 300])}
    if delay > 0:
        return queue.enqueue_in(timedelta(seconds=delay), func, *args, **options)
    return queue.enqueue(func, *args, **options)


def enqueue_card_update(merchant_id: int, card_id: int, delay: float = 0):
    """One update job for the card, `delay` seconds from now (changes coalesce meanwhile)."""
    return _enqueue(update_card_wallet, merchant_id, card_id, delay=delay)


def enqueue_apns_retry(merchant_id: int, card_id: int, tokens: list[str], attempt: int,
                       delay: float):
    # The push retries itself (with back-off) through new jobs, not RQ's retry.
    return _enqueue(retry_apns_push, merchant_id, card_id, tokens, attempt, delay=delay,
                    retry=Retry(max=1, interval=60))


def enqueue_google_sync(merchant_id: int, card_id: int):
    return _enqueue(sync_google_object, merchant_id, card_id, delay=30)
