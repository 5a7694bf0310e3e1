"""Idempotency-Key handling: the same key and body get the same answer for 24 hours."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import IdempotencyRecord
from app.models.clock import utcnow
from app.services.errors import ServiceError

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


def begin(key: str, scope: str, print_: str) -> IdempotencyRecord | None:
    """Claim ``key`` for a new request, or return the stored answer to replay.

    Raises 422 idempotency_key_reused when the key came with another body, and 409
    idempotency_request_in_progress while the first request is still being answered.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ServiceError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    for _ in range(2):
        now = utcnow()
        record = db.session.get(IdempotencyRecord, key, populate_existing=True)
        expired = record is not None and _expired(record, now)
        abandoned = record is not None and record.status_code is None and record.created_at < now - ABANDONED_AFTER
        if record is not None and not expired and not abandoned:
            if record.scope != scope or record.fingerprint != print_:
                raise _reused()
            if record.status_code is None:
                raise _in_progress()
            db.session.rollback()
            return record
        if record is not None:
            db.session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.key == key))
        db.session.add(IdempotencyRecord(key=key, scope=scope, fingerprint=print_, created_at=now))
        try:
            db.session.commit()
            return None
        except IntegrityError:
            db.session.rollback()  # a concurrent request claimed it first: read its record
    raise _in_progress()


def finish(key: str, status_code: int, response: dict) -> None:
    """Store the answer given to the request that claimed ``key``."""
    record = db.session.get(IdempotencyRecord, key)
    if record is not None:
        record.status_code = status_code
        record.response = response
        db.session.commit()


def release(key: str) -> None:
    """Forget a claim whose request failed unexpectedly, so a retry can run."""
    db.session.rollback()
    db.session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.key == key, IdempotencyRecord.status_code.is_(None))
    )
    db.session.commit()
