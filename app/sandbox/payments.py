"""What the sandbox gateway does to a payment session: create, pay, confirm, settle, expire.

Every status move goes through ``move_status``: a conditional update on the old status
(and step), so only one caller wins a race, and the winner queues the webhook in the same
database transaction. Refunds live in ``app.sandbox.refunds``.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.sandbox import cards
from app.sandbox.models import (
    CANCELLED,
    EXPIRED,
    FAILURE,
    PAID_STATUSES,
    PENDING,
    STEP_CONFIRM,
    STEP_PROCESSING,
    SUCCESS,
    PaymentSession,
    utcnow,
)
from app.sandbox.outbox import queue_status_event
from app.sandbox.protocol import CreateSessionRequest, SandboxError

log = logging.getLogger(__name__)

_ANY_STEP = (None, STEP_CONFIRM, STEP_PROCESSING)
OPEN_STEPS = (None, STEP_CONFIRM)  # no money accepted yet: the session may still expire or be cancelled


def create_session(runtime, request: CreateSessionRequest, key: str) -> tuple[PaymentSession, bool]:
    """Create the session for ``request``, or return the one made under the same key.

    Returns ``(session, created)``. The same key with another body is a 422
    ``idempotency_key_reused``; a transaction id already used under another key is a 409.
    """
    fingerprint = request.fingerprint()
    merchant = request.merchant_name or runtime.settings["SANDBOX_MERCHANT_NAME"]
    for _attempt in range(2):
        with runtime.storage.session() as db:
            # One query, one snapshot: a concurrent twin's commit cannot fall between two reads.
            found = db.scalars(
                select(PaymentSession).where(
                    (PaymentSession.idempotency_key == key)
                    | (PaymentSession.transaction_id == request.transaction_id)
                )
            ).all()
            same_key = [s for s in found if s.idempotency_key == key]
            if same_key:
                if same_key[0].request_fingerprint != fingerprint:
                    raise SandboxError(
                        422, "idempotency_key_reused", "This Idempotency-Key was used with a different request."
                    )
                return same_key[0], False
            if found:
                raise SandboxError(
                    409, "transaction_exists", "A session exists for this transaction_id under another key."
                )
            session = PaymentSession(
                session_id="cs_" + secrets.token_urlsafe(18),
                transaction_id=request.transaction_id,
                idempotency_key=key,
                request_fingerprint=fingerprint,
                amount=request.amount,
                currency=request.currency,
                merchant_name=merchant,
                callback_url=request.callback_url,
                return_url=request.return_url,
                cancel_url=request.cancel_url,
                expires_at=request.expires_at,
            )
            db.add(session)
            try:
                db.commit()
            except IntegrityError:
                db.rollback()  # a concurrent identical request won; read its session
                continue
            log.info(
                "sandbox session %s created for transaction %s: %d %s",
                session.session_id, session.transaction_id, session.amount, session.currency,
            )
            return session, True
    raise SandboxError(409, "conflict", "A concurrent request for this transaction is in progress; retry.")


def move_status(
    runtime, session: PaymentSession, new_status: str, *, steps=_ANY_STEP, **values
) -> PaymentSession | None:
    """Move a pending session to ``new_status`` if it is still pending in one of ``steps``.

    Queues the webhook in the same transaction. Returns the updated session, or None when
    another caller moved it first (nothing is queued then).
    """
    now = utcnow()
    with runtime.storage.session() as db:
        step_clause = PaymentSession.step.in_([s for s in steps if s])
        if None in steps:
            step_clause = step_clause | PaymentSession.step.is_(None)
        result = db.execute(
            update(PaymentSession)
            .where(PaymentSession.id == session.id, PaymentSession.status == PENDING, step_clause)
            .values(status=new_status, step=None, settle_at=None, updated_at=now, **values)
        )
        if result.rowcount != 1:
            db.rollback()
            return None
        moved = db.get(PaymentSession, session.id, populate_existing=True)
        faults = runtime.faults.effective(moved.transaction_id, moved.session_id)
        queue_status_event(db, moved, new_status, faults, now, stale=_stale_event(session, new_status))
        db.commit()
    log.info("sandbox transaction %s moved pending -> %s", moved.transaction_id, new_status)
    runtime.wake()
    return moved


def _stale_event(before: PaymentSession, new_status: str) -> tuple[str, datetime] | None:
    """The earlier event the out-of-order fault sends after ``new_status``."""
    if new_status not in (SUCCESS, FAILURE):
        return None
    if before.step in (STEP_CONFIRM, STEP_PROCESSING) and before.step_started_at:
        return PENDING, before.step_started_at
    return (FAILURE if new_status == SUCCESS else PENDING), before.created_at


def _set_step(runtime, session: PaymentSession, step: str, **values) -> PaymentSession | None:
    now = utcnow()
    with runtime.storage.session() as db:
        result = db.execute(
            update(PaymentSession)
            .where(PaymentSession.id == session.id, PaymentSession.status == PENDING, PaymentSession.step.is_(None))
            .values(step=step, step_started_at=now, updated_at=now, **values)
        )
        db.commit()
        if result.rowcount != 1:
            return None
        return db.get(PaymentSession, session.id, populate_existing=True)


def find_session(runtime, *, session_id: str | None = None, transaction_id: str | None = None) -> PaymentSession | None:
    """The session by either id, brought up to date (settled or expired when due)."""
    column, value = (
        (PaymentSession.session_id, session_id) if session_id is not None
        else (PaymentSession.transaction_id, transaction_id)
    )
    with runtime.storage.session() as db:
        session = db.scalar(select(PaymentSession).where(column == value))
    return None if session is None else refresh(runtime, session)


def both_ids(runtime, transaction_id: str | None, session_id: str | None) -> list[str | None]:
    """``[transaction_id, session_id]`` of the payment known by either (as given if unknown)."""
    with runtime.storage.session() as db:
        row = db.execute(
            select(PaymentSession.transaction_id, PaymentSession.session_id).where(
                (PaymentSession.transaction_id == transaction_id) | (PaymentSession.session_id == session_id)
            ).limit(1)
        ).first()
    return list(row) if row else [transaction_id, session_id]


def refresh(runtime, session: PaymentSession) -> PaymentSession:
    """Apply what time has made due: the settle-later card succeeds, an overdue session expires."""
    now = utcnow()
    if session.status == PENDING and session.step == STEP_PROCESSING and session.settle_at <= now:
        session = move_status(runtime, session, SUCCESS, steps=(STEP_PROCESSING,)) or _reload(runtime, session)
    if session.status == PENDING and session.step != STEP_PROCESSING and session.expires_at <= now:
        log.info("sandbox transaction %s passed expires_at", session.transaction_id)
        session = move_status(runtime, session, EXPIRED, steps=OPEN_STEPS) or _reload(runtime, session)
    return session


def _reload(runtime, session: PaymentSession) -> PaymentSession:
    with runtime.storage.session() as db:
        return db.get(PaymentSession, session.id, populate_existing=True)


def submit_card(runtime, session: PaymentSession, check: cards.CardCheck) -> PaymentSession | None:
    """Apply an accepted card form to an open session; None if the session was no longer open."""
    tx = session.transaction_id
    log.info("sandbox transaction %s card ending %s submitted: %s", tx, check.last4, check.outcome)
    if check.outcome == cards.DECLINE:
        return move_status(runtime, session, FAILURE, steps=(None,), card_last4=check.last4)
    if check.outcome == cards.CONFIRM:
        return _set_step(runtime, session, STEP_CONFIRM, card_last4=check.last4)
    if check.outcome == cards.SETTLE_LATER:
        settle_at = utcnow() + timedelta(seconds=float(runtime.settings["SANDBOX_PENDING_SECONDS"]))
        moved = _set_step(runtime, session, STEP_PROCESSING, card_last4=check.last4, settle_at=settle_at)
        runtime.wake()
        return moved
    return move_status(runtime, session, SUCCESS, steps=(None,), card_last4=check.last4)


def confirm(runtime, session: PaymentSession, complete: bool) -> PaymentSession | None:
    """The confirmation step's answer: Complete → success, Fail → failure."""
    log.info("sandbox transaction %s confirmation: %s", session.transaction_id, "complete" if complete else "fail")
    return move_status(runtime, session, SUCCESS if complete else FAILURE, steps=(STEP_CONFIRM,))


def cancel(runtime, session: PaymentSession) -> PaymentSession | None:
    """The shopper left from the hosted page: the session becomes cancelled."""
    return move_status(runtime, session, CANCELLED, steps=OPEN_STEPS)


def expire(runtime, session_id: str) -> PaymentSession:
    """``POST /sessions/<id>/expire``: the session's status afterwards (idempotent).

    A pending session becomes expired; a paid one stays paid (the route answers 409). A card
    already accepted and still settling (4000 0000 0000 0077) is not taken back: it settles
    now, as "accepted, then success" promises, and the route answers 409 like any paid one.
    """
    session = find_session(runtime, session_id=session_id)
    if session is None:
        raise SandboxError(404, "session_not_found", "No session has this id.")
    if session.status == PENDING and session.step == STEP_PROCESSING:
        session = move_status(runtime, session, SUCCESS, steps=(STEP_PROCESSING,)) or _reload(runtime, session)
    if session.status == PENDING:
        session = move_status(runtime, session, EXPIRED, steps=OPEN_STEPS) or _reload(runtime, session)
    return session


def is_paid(session: PaymentSession) -> bool:
    """True once the shopper's money was taken (refunds included)."""
    return session.status in PAID_STATUSES


def settle_due(runtime, now: datetime | None = None) -> int:
    """Succeed every settle-later session whose wait is over; returns how many moved."""
    now = now or utcnow()
    with runtime.storage.session() as db:
        due = db.scalars(
            select(PaymentSession).where(
                PaymentSession.status == PENDING,
                PaymentSession.step == STEP_PROCESSING,
                PaymentSession.settle_at <= now,
            ).limit(100)
        ).all()
    return sum(1 for s in due if move_status(runtime, s, SUCCESS, steps=(STEP_PROCESSING,)))


def _open_step():
    """Sessions in one of OPEN_STEPS: the only ones that can still expire."""
    return PaymentSession.step.is_(None) | PaymentSession.step.in_([s for s in OPEN_STEPS if s])


def expire_overdue(runtime, now: datetime | None = None) -> int:
    """Expire every pending session past its expires_at; returns how many moved. A card already
    accepted (0077, settling) is never expired: the money went through, it settles instead."""
    now = now or utcnow()
    with runtime.storage.session() as db:
        due = db.scalars(
            select(PaymentSession).where(PaymentSession.status == PENDING, _open_step(),
                                         PaymentSession.expires_at <= now).limit(100)
        ).all()
    return sum(1 for s in due if move_status(runtime, s, EXPIRED, steps=OPEN_STEPS))


def next_timer_at(runtime) -> datetime | None:
    """The earliest moment a pending session settles or expires, for the worker's sleep."""
    with runtime.storage.session() as db:
        settle = db.scalar(
            select(func.min(PaymentSession.settle_at)).where(
                PaymentSession.status == PENDING, PaymentSession.step == STEP_PROCESSING
            )
        )
        expiry = db.scalar(select(func.min(PaymentSession.expires_at)).where(PaymentSession.status == PENDING,
                                                                             _open_step()))
    moments = [m for m in (settle, expiry) if m is not None]
    return min(moments) if moments else None
