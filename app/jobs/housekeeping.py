"""Housekeeping run with each reconciliation pass: records past their use are deleted.

Idempotency answers are kept for IDEMPOTENCY_TTL_SECONDS (the contract promises 24 hours),
rejected webhook deliveries for WEBHOOK_REJECTION_RETENTION_DAYS. Each pass deletes at most
PRUNE_BATCH rows of each, so a backlog drains over a few passes without a long lock. Staff
sessions past their limits are ended here too, which disconnects their ops sockets.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, select

from app.auth import sessions
from app.extensions import db
from app.models import IdempotencyRecord, WebhookRejection
from app.models.clock import utcnow

log = logging.getLogger(__name__)
PRUNE_BATCH = 5000


def prune_expired_records() -> int:
    """Delete expired idempotency answers and old rejected deliveries; returns how many."""
    now = utcnow()
    idempotency_cutoff = now - timedelta(seconds=current_app.config["IDEMPOTENCY_TTL_SECONDS"])
    rejection_cutoff = now - timedelta(days=current_app.config["WEBHOOK_REJECTION_RETENTION_DAYS"])
    removed = 0
    for model, key, column, cutoff in (
        (IdempotencyRecord, IdempotencyRecord.key, IdempotencyRecord.created_at, idempotency_cutoff),
        (WebhookRejection, WebhookRejection.id, WebhookRejection.received_at, rejection_cutoff),
    ):
        oldest = select(key).where(column < cutoff).limit(PRUNE_BATCH).scalar_subquery()
        removed += db.session.execute(
            delete(model).where(key.in_(oldest)).execution_options(synchronize_session=False)
        ).rowcount
    db.session.commit()
    if removed:
        log.info("housekeeping: %s expired record(s) deleted", removed)
    sessions.end_expired_sessions()
    return removed
