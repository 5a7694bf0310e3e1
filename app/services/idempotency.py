"""Idempotency-Key handling: the same key and body get the same answer for 24 hours."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from app.connections import retry_on_lost_connection
from app.extensions import db
from app.models import IdempotencyRecord
from app.models.clock import utcnow
from app.services.errors import ServiceError
from app.services.waiting import wait_for

log = logging.getLogger(__name__)

# A first request that has not answered within this long is taken to have died.
ABANDONED_AFTER = timedelta(seconds=60)
MAX_KEY_LENGTH = 255


def fingerprint(body: object) -> str:
    """A stable hash of a JSON body, independent of key order and spacing."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _reused() -> ServiceError:
    return ServiceError(422, "idempotency_key_reused", "This Idempotency-Key was used with another request body.")


def _in_progress() -> ServiceError:
    return ServiceError(409, "idempotency_request_in_progress",
                        "A request with this Idempotency-Key is still being answered; retry shortly.")


def _expired(record: IdempotencyRecord, now) -> bool:
    return record.created_at < now - timedelta(seconds=current_app.config["IDEMPOTENCY_TTL_SECONDS"])


def refuse_if_taken(key: str | None) -> None:
    """Raise 422 idempotency_key_reused when ``key`` holds a live answer: for a request whose
    body is refused before it could be compared, that body is necessarily another one."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return
    record = db.session.get(IdempotencyRecord, key)
    if record is not None and not _expired(record, utcnow()):
        raise _reused()


@dataclass(frozen=True)
class Claim:
    """This request's hold on a key: only the holder stores the key's answer."""

    key: str
    claimed_at: datetime


def begin(key: str, scope: str, print_: str) -> IdempotencyRecord | Claim:
    """Claim ``key`` for a new request, or return the stored answer to replay.

    A copy that arrives while the first request is still being answered waits for its answer
    (up to IDEMPOTENCY_WAIT_SECONDS, beyond the gateway's whole budget) and replays it, so
    every copy gets the same status and JSON. Raises 422 idempotency_key_reused when the key
    came with another body, and 409 idempotency_request_in_progress only when the wait ends
    without an answer.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ServiceError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")

    def read() -> IdempotencyRecord | None:
        return db.session.get(IdempotencyRecord, key, populate_existing=True)

    def another_request(record: IdempotencyRecord) -> bool:
        return record.scope != scope or record.fingerprint != print_

    def settled(record: IdempotencyRecord | None) -> bool:
        """Nothing to wait for: free, answered, stale, or another request (refused at once)."""
        return (record is None or record.status_code is not None or _stale(record, utcnow())
                or another_request(record))

    for _ in range(3):
        record = wait_for(read, settled, current_app.config["IDEMPOTENCY_WAIT_SECONDS"])
        now = utcnow()
        if record is not None and not _stale(record, now):
            if another_request(record):
                raise _reused()
            if record.status_code is None:
                raise _in_progress()
            db.session.rollback()
            return record
        if record is not None:  # expired, or its first request died: take it over, unless someone just did
            db.session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.key == key,
                                                               IdempotencyRecord.created_at == record.created_at))
        db.session.add(IdempotencyRecord(key=key, scope=scope, fingerprint=print_, created_at=now))
        try:
            db.session.commit()
            return Claim(key, now)
        except IntegrityError:
            db.session.rollback()  # a concurrent request claimed it first: wait for its answer
    raise _in_progress()


def _stale(record: IdempotencyRecord, now) -> bool:
    """Past the replay window, or claimed by a request that never answered."""
    return _expired(record, now) or (record.status_code is None and record.created_at < now - ABANDONED_AFTER)


def finish(claim: Claim, status_code: int, response: dict) -> None:
    """Store the answer given to the request holding ``claim``; a claim taken over since (its
    request outlived ABANDONED_AFTER) stores nothing, so the key's answer never changes.

    The work is done by now (a payment may have been started), so a connection lost under the
    write is retried on a fresh one: otherwise a copy of the request would wait for an answer
    that never comes, then be refused as in progress until the claim is abandoned.
    """
    def store() -> bool:
        stored = db.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == claim.key, IdempotencyRecord.created_at == claim.claimed_at,
                   IdempotencyRecord.status_code.is_(None))
            .values(status_code=status_code, response=response)
        ).rowcount
        db.session.commit()
        if stored == 1:
            return True
        record = db.session.get(IdempotencyRecord, claim.key, populate_existing=True)
        db.session.rollback()
        # stored by our own earlier attempt, whose commit went through but whose answer was lost
        return record is not None and record.created_at == claim.claimed_at and record.status_code == status_code

    if not retry_on_lost_connection(store, what=f"storing the answer to Idempotency-Key claim {claim.claimed_at}"):
        log.warning("idempotency key claim from %s was taken over before it answered", claim.claimed_at)


def release(claim: Claim) -> None:
    """Forget a claim whose request failed unexpectedly, so a retry can run."""
    db.session.rollback()
    db.session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.key == claim.key,
                                        IdempotencyRecord.created_at == claim.claimed_at,
                                        IdempotencyRecord.status_code.is_(None))
    )
    db.session.commit()
