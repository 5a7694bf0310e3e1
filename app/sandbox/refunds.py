"""Refunds against a paid session; the refunded sum never exceeds the paid amount.

The sum is guarded by one conditional update (``refunded_amount + amount <= amount``), so
concurrent refunds cannot overshoot on any database.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError

from app.sandbox.models import (
    PARTIALLY_REFUNDED,
    REFUNDED,
    SUCCESS,
    PaymentSession,
    Refund,
    utcnow,
)
from app.sandbox.outbox import queue_status_event
from app.sandbox.protocol import SandboxError

log = logging.getLogger(__name__)

REFUNDABLE = (SUCCESS, PARTIALLY_REFUNDED)


def _fingerprint(transaction_id: str, amount: int) -> str:
    return hashlib.sha256(f"{transaction_id}\n{amount}".encode()).hexdigest()


def _replay(db, key: str | None, fingerprint: str) -> Refund | None:
    if key is None:
        return None
    existing = db.scalar(select(Refund).where(Refund.idempotency_key == key))
    if existing is not None and existing.request_fingerprint != fingerprint:
        raise SandboxError(422, "idempotency_key_reused", "This Idempotency-Key was used with a different refund.")
    return existing


def refund(runtime, transaction_id: str, amount: int, key: str | None = None) -> Refund:
    """Refund ``amount`` minor units of a paid transaction and return the refund.

    The same ``key`` (the optional Idempotency-Key header) returns the same refund.
    Raises SandboxError: 404 unknown transaction, 409 not paid, 422 above what is left.
    """
    fingerprint = _fingerprint(transaction_id, amount)
    now = utcnow()
    with runtime.storage.session() as db:
        existing = _replay(db, key, fingerprint)
        if existing is not None:
            return existing
        session = db.scalar(select(PaymentSession).where(PaymentSession.transaction_id == transaction_id))
        if session is None:
            raise SandboxError(404, "transaction_not_found", "No payment has this transaction_id.")
        status_before = session.status
        total = PaymentSession.refunded_amount + amount
        result = db.execute(
            update(PaymentSession)
            .where(
                PaymentSession.id == session.id,
                PaymentSession.status.in_(REFUNDABLE),
                total <= PaymentSession.amount,
            )
            .values(
                refunded_amount=total,
                status=case((total >= PaymentSession.amount, REFUNDED), else_=PARTIALLY_REFUNDED),
                updated_at=now,
            )
        )
        if result.rowcount != 1:
            db.rollback()
            existing = _replay(db, key, fingerprint)  # the same key's first copy may have taken the amount
            if existing is not None:
                return existing
            current = db.get(PaymentSession, session.id, populate_existing=True)
            if current.status not in REFUNDABLE and current.status != REFUNDED:
                raise SandboxError(409, "not_refundable", f"The payment is {current.status}, not paid.")
            left = current.amount - current.refunded_amount
            raise SandboxError(
                422, "amount_exceeds_refundable",
                f"Only {left} minor units are left to refund.", refundable_amount=left,
            )
        record = Refund(
            refund_id="re_" + secrets.token_urlsafe(18),
            transaction_id=transaction_id,
            amount=amount,
            idempotency_key=key,
            request_fingerprint=fingerprint,
        )
        db.add(record)
        try:
            db.flush()
        except IntegrityError:
            db.rollback()  # the same key raced us; answer with the winner's refund
            existing = _replay(db, key, fingerprint)
            if existing is None:
                raise
            return existing
        updated = db.get(PaymentSession, session.id, populate_existing=True)
        if updated.status != status_before:
            faults = runtime.faults.effective(updated.transaction_id, updated.session_id)
            queue_status_event(db, updated, updated.status, faults, now)
        db.commit()
    log.info(
        "sandbox refund %s of %d for transaction %s; payment now %s",
        record.refund_id, amount, transaction_id, updated.status,
    )
    runtime.wake()
    return record
