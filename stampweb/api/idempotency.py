"""`Idempotency-Key` on every POST: a retried request gets the first answer, and nothing new.

The key is claimed by inserting its record, with no answer yet, in a
transaction of its own that commits before the work starts. A duplicate
(sequential or concurrent) fails that insert on the unique (merchant, key)
and then waits for the first request's answer, which it replays; if the
first is still running after a few seconds the duplicate gets 409. The same
key with a different request is refused with 422. A request that ends in a
server error gives its claim back, so a retry runs again.

The stamping service's own request-key de-duplication (Visit.request_key) is
fed from the same key: if a process dies after stamping but before saving the
answer, the retry that takes the stale claim over still writes no second visit.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from datetime import timedelta

from flask import Response
from flask_babel import gettext as _
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..database import begin_write
from ..extensions import db
from ..models import IdempotencyRecord, utcnow
from ..tenancy import tenant
from .errors import ApiProblem, problem_response

HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
# How long a duplicate waits for the first request before answering 409.
WAIT_SECONDS = 10.0
# A claim with no answer after this long belongs to a request that died.
STALE_AFTER = timedelta(minutes=2)
# Answers are kept this long; older records may be removed (see purge()).
RETENTION = timedelta(days=2)
_REPLAYED_HEADERS = ("Content-Type", "Location")


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise ApiProblem(
            400,
            _("Idempotency-Key must be 1 to 255 visible ASCII characters."),
            code="bad_idempotency_key",
            errors=[{"field": HEADER, "pointer": "", "message": _("Invalid value."),
                     "in": "header"}],
        )
    return key


def fingerprint(method: str, path: str, body) -> str:
    """What makes two requests "the same": method, path and the JSON body, key order aside."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def request_key_for_stamping(key: str) -> str:
    """The idempotency key as a Visit.request_key (fixed length, safe characters)."""
    return "api-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def run(
    merchant_id: int,
    api_key_id: int,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    handler: Callable[[], Response],
) -> Response:
    """Answer the request once per key: run `handler` or replay what it answered before."""
    record_id = _claim(merchant_id, api_key_id, key, method, path, request_hash)
    if record_id is None:
        outcome = _await_first(merchant_id, api_key_id, key, method, path, request_hash)
        if isinstance(outcome, Response):
            return outcome
        record_id = outcome
    try:
        response = handler()
    except BaseException:
        db.session.rollback()
        _release(merchant_id, record_id)
        raise
    if response.status_code >= 500:
        db.session.rollback()
        _release(merchant_id, record_id)
        return response
    _complete(merchant_id, record_id, response)
    return response


def _claim(merchant_id, api_key_id, key, method, path, request_hash) -> int | None:
    with tenant(merchant_id):
        begin_write()
        record = IdempotencyRecord(
            merchant_id=merchant_id, key=key, api_key_id=api_key_id, method=method,
            path=path[:255], request_hash=request_hash,
        )
        db.session.add(record)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            return None
        return record.id


def _await_first(merchant_id, api_key_id, key, method, path, request_hash) -> Response | int:
    """Replay the first answer when it is there; take over a dead claim; else 409."""
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.02
    while True:
        # A fresh transaction each time round: on SQLite a read transaction
        # keeps seeing the snapshot it started with.
        db.session.rollback()
        with tenant(merchant_id):
            record = db.session.scalar(
                select(IdempotencyRecord).where(IdempotencyRecord.key == key)
                .execution_options(populate_existing=True)
            )
        if record is None:
            # The first request failed and gave the key back: go ourselves.
            claimed = _claim(merchant_id, api_key_id, key, method, path, request_hash)
            if claimed is not None:
                return claimed
            continue
        if record.request_hash != request_hash:
            db.session.rollback()
            raise ApiProblem(
                422,
                _("This Idempotency-Key was used for a different request. "
                  "Use a new key for a new request."),
                code="idempotency_key_reused",
            )
        if record.response_status is not None:
            return _replay(record)
        if utcnow() - record.created_at > STALE_AFTER:
            taken = _take_over(merchant_id, record.id, record.created_at)
            if taken:
                return record.id
            continue
        if time.monotonic() >= deadline:
            db.session.rollback()
            raise ApiProblem(
                409,
                _("A request with this Idempotency-Key is still being processed; "
                  "retry in a moment."),
                code="request_in_progress",
                headers={"Retry-After": "1"},
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _take_over(merchant_id: int, record_id: int, seen_created_at) -> bool:
    with tenant(merchant_id):
        begin_write()
        result = db.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record_id,
                   IdempotencyRecord.response_status.is_(None),
                   IdempotencyRecord.created_at == seen_created_at)
            .values(created_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return result.rowcount == 1


def _replay(record: IdempotencyRecord) -> Response:
    body = json.dumps(record.response_body) if record.response_body is not None else ""
    response = Response(body, status=record.response_status)
    for name, value in (record.response_headers or {}).items():
        response.headers[name] = value
    response.headers["Idempotent-Replayed"] = "true"
    db.session.rollback()
    return response


def _complete(merchant_id: int, record_id: int, response: Response) -> None:
    data = response.get_data()
    body = json.loads(data) if data else None
    headers = {name: response.headers[name] for name in _REPLAYED_HEADERS
               if name in response.headers}
    with tenant(merchant_id):
        begin_write()
        db.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record_id)
            .values(response_status=response.status_code, response_body=body,
                    response_headers=headers, completed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()


def _release(merchant_id: int, record_id: int) -> None:
    with tenant(merchant_id):
        begin_write()
        db.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()


def purge(merchant_id: int, now=None) -> int:
    """Forget answers older than RETENTION; returns how many went."""
    cutoff = (now or utcnow()) - RETENTION
    with tenant(merchant_id):
        begin_write()
        result = db.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return result.rowcount


__all__ = ["HEADER", "check_key", "fingerprint", "problem_response", "purge", "run"]
