"""Starting payments and reading their status (contract section 3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cache

from flask import current_app
from sqlalchemy import bindparam, select

from app.domain.status import Status
from app.extensions import db
from app.gateways.base import GatewayError, SessionRequest
from app.gateways.registry import get_gateway
from app.models import Order, OrderStatus, Transaction, TransactionEvent
from app.models.clock import find_by_id, iso, plausible_id, public_id, utcnow
from app.services import idempotency, one_statement, timeline
from app.services.errors import ServiceError, transaction_not_found
from app.services.status_moves import apply_status

log = logging.getLogger(__name__)


def find_transaction(transaction_id: object) -> Transaction | None:
    """The transaction, or None (also for anything that could not be one of our ids)."""
    return find_by_id(Transaction, transaction_id)


def get_transaction(transaction_id: str) -> Transaction:
    """The transaction, or a 404 ServiceError."""
    tx = find_transaction(transaction_id)
    if tx is None:
        raise transaction_not_found()
    return tx


@dataclass(frozen=True)
class _Payment:
    """The few facts of a transaction that starting a payment reads and answers with."""

    id: str
    order_id: str
    amount: int
    currency: str
    status: str
    expires_at: datetime
    payment_url: str | None


# Initiation's statements, built once (it is the busiest write path after webhooks).
_orders, _transactions, _events = Order.__table__, Transaction.__table__, TransactionEvent.__table__
# Touching the order takes its write lock (a row lock on PostgreSQL, the database's write lock
# on SQLite), so two initiations for one order never both open a transaction.
_LOCK_ORDER = (
    _orders.update().where(_orders.c.id == bindparam("order_id")).values(updated_at=bindparam("now"))
    .returning(_orders.c.status, _orders.c.total, _orders.c.currency)
)
_PAYMENT_COLUMNS = (_transactions.c.id, _transactions.c.order_id, _transactions.c.amount, _transactions.c.currency,
                    _transactions.c.status, _transactions.c.expires_at, _transactions.c.payment_url)
# Handed out again while its gateway session is open (expires_at ahead), even when a lowered
# PAYMENT_EXPIRES_AFTER has made it overdue: a second session beside a live one could be paid
# twice, and the next reconciliation pass closes the overdue one anyway.
_OPEN_PAYMENT = (
    select(*_PAYMENT_COLUMNS)
    .where(_transactions.c.order_id == bindparam("order_id"), _transactions.c.status == Status.PENDING.value,
           _transactions.c.expires_at > bindparam("now"))
    .order_by(_transactions.c.created_at.desc())
    .limit(1)
)
_INSERT_PAYMENT = _transactions.insert()
_SAVE_SESSION = (  # only onto a payment still pending with no page: never revive a closed one
    _transactions.update()
    .where(_transactions.c.id == bindparam("tx_id"), _transactions.c.status == Status.PENDING.value,
           _transactions.c.payment_url.is_(None))
    .values(gateway_session_id=bindparam("session_id"), payment_url=bindparam("url"))
)
_HOLD_PAYMENT = (  # a no-op write: takes the row's lock (the database's write lock on SQLite)
    _transactions.update().where(_transactions.c.id == bindparam("tx_id"))
    .values(updated_at=_transactions.c.updated_at)
)
_READ_SESSION = select(_transactions.c.status, _transactions.c.payment_url).where(
    _transactions.c.id == bindparam("tx_id"))


def _read_session(tx_id: str, *, hold: bool = False):
    """The payment's status and page now; with ``hold``, first take its row's write lock.

    Two initiations for one order can both be opening the same payment's session (the gateway
    answers both with the same one: the Idempotency-Key is the transaction id). A failed call
    holds the row while it decides, so a racing save either landed before it (and its page is
    handed out instead) or waits and then finds the payment failed (and saves nothing).
    """
    connection = db.session.connection()
    if hold:
        connection.execute(_HOLD_PAYMENT, {"tx_id": tx_id})
    return connection.execute(_READ_SESSION, {"tx_id": tx_id}).one()


def _initiation_body(tx: _Payment) -> dict:
    base = current_app.config["PUBLIC_BASE_URL"]
    return {
        "transaction_id": tx.id,
        "status": tx.status,
        "payment_url": tx.payment_url,
        "expires_at": iso(tx.expires_at),
        "status_url": f"{base}/check-payment-status/{tx.id}",
        "order_id": tx.order_id,
        "amount": tx.amount,
        "currency": tx.currency,
        "page_url": f"{base}/payment/{tx.id}",
    }


def _open_session(tx: _Payment) -> _Payment:
    """Ask the gateway for the hosted page; idempotent on the transaction id, so safe to repeat."""
    base = current_app.config["PUBLIC_BASE_URL"]
    request = SessionRequest(
        transaction_id=tx.id,
        amount=tx.amount,
        currency=tx.currency,
        callback_url=f"{base}/payment-callback",
        return_url=f"{base}/payment/{tx.id}?returned=1",
        cancel_url=f"{base}/payment/{tx.id}?cancelled=1",
        expires_at=tx.expires_at,
    )
    session = get_gateway().create_session(request)
    saved = one_statement.update_and_record(
        _SAVE_SESSION, {"tx_id": tx.id, "session_id": session.session_id, "url": session.payment_url},
        [timeline.line(tx.id, "gateway", "api", "gateway session opened", outcome="ok",
                       detail={"session_id": session.session_id})], name="gateway_page")
    if saved != 1:  # a racing initiation saved the page first, or gave the payment up as failed
        current = _read_session(tx.id)
        db.session.commit()
        if current.status == Status.PENDING.value and current.payment_url is not None:
            return replace(tx, payment_url=current.payment_url)
        raise GatewayError(f"the payment became {current.status} while its gateway session was being opened")
    log.info("txn=%s gateway session %s opened", tx.id, session.session_id)
    return replace(tx, payment_url=session.payment_url)


def open_payment(order_id: str, now: datetime) -> _Payment | None:
    """The order's newest pending payment whose gateway session is still open, if any: the one
    initiation hands out again (contract section 3) and the checkout page offers to follow."""
    return _payment(db.session.connection().execute(_OPEN_PAYMENT, {"order_id": order_id, "now": now}).first())


def _payment(row) -> _Payment | None:
    return _Payment(*row) if row is not None else None


@cache
def _open_or_start_statement(columns: tuple[str, ...]):
    """``_open_or_start`` as one statement (PostgreSQL): the open payment if there is one, and
    else the new payment's row and its timeline line, written by the same statement."""
    open_ = _OPEN_PAYMENT.cte("open_payment")
    none_open = ~select(*open_.c).exists()
    return select(*open_.c).add_cte(
        one_statement.rows_where(none_open, _transactions, columns, 1, "payment"),
        one_statement.rows_where(none_open, _events, timeline.COLUMNS, 1, "line"))


def _open_or_start(order_id: str, now: datetime, payment: dict, started: dict) -> _Payment | None:
    """The order's open payment, or None after adding ``payment`` and its ``started`` line (in
    the caller's database transaction, which holds the order's lock: a statement that starts
    after the lock was taken sees any payment a racing initiation committed before it)."""
    if one_statement.on_postgresql():
        payment = one_statement.with_defaults(_transactions, payment)
        return _payment(db.session.connection().execute(_open_or_start_statement(tuple(payment)), {
            "order_id": order_id, "now": now,
            **one_statement.row_params("payment", [payment]), **one_statement.row_params("line", [started])}).first())
    existing = open_payment(order_id, now)
    if existing is None:
        db.session.connection().execute(_INSERT_PAYMENT, payment)
        timeline.add(started)
    return existing


def _start(order_id: str, amount: int | None, key: str | None) -> tuple[int, dict]:
    now = utcnow()
    connection = db.session.connection()
    order = connection.execute(_LOCK_ORDER, {"order_id": order_id, "now": now}).first() \
        if plausible_id(order_id) else None
    if order is None:
        db.session.rollback()
        raise ServiceError(404, "order_not_found", "No order has that id.")
    if amount is not None and amount != order.total:
        db.session.rollback()
        raise ServiceError(422, "amount_mismatch", f"The amount does not match the order total of {order.total}.")
    if order.status != OrderStatus.OPEN.value:
        db.session.rollback()
        raise ServiceError(409, "order_already_paid", "This order is already paid.")
    tx = _Payment(public_id("txn"), order_id, order.total, order.currency, Status.PENDING.value,
                  now + timedelta(seconds=current_app.config["PAYMENT_EXPIRES_AFTER"]), None)  # if none is open
    payment = {
        "id": tx.id, "order_id": order_id,
        "amount": order.total,  # always the stored order's total, never the client's
        "currency": order.currency, "status": tx.status, "gateway": get_gateway().name,
        "expires_at": tx.expires_at, "idempotency_key": key, "created_at": now, "updated_at": now,
    }
    started = timeline.line(tx.id, "created", "api", f"payment started for order {order_id}", outcome="ok",
                            detail={"amount": tx.amount, "currency": tx.currency})
    existing = _open_or_start(order_id, now, payment, started)
    created = existing is None
    if created:
        log.info("txn=%s created for order=%s amount=%s %s", tx.id, order_id, tx.amount, tx.currency)
    else:
        tx = existing
    db.session.commit()  # the pending transaction exists before the gateway is called
    if created:
        from app.realtime import notify_ops_only  # realtime imports services; keep the cycle lazy

        notify_ops_only(tx.id, tx.status)  # the ops list shows it at once

    if tx.payment_url is None:
        try:
            tx = _open_session(tx)
        except GatewayError as exc:
            db.session.rollback()
            current = _read_session(tx.id, hold=True)
            if current.status == Status.PENDING.value and current.payment_url is not None:
                db.session.commit()  # a racing initiation opened the page meanwhile: hand out that one
                log.info("txn=%s gateway failed (%s) but a racing initiation opened the page", tx.id, exc)
                return (201 if created else 200), _initiation_body(replace(tx, payment_url=current.payment_url))
            log.warning("txn=%s gateway failed: %s", tx.id, exc)
            # Still holding the row: apply_status joins this transaction and commits it.
            apply_status(tx.id, Status.FAILURE, source="api", summary=f"gateway unavailable: {exc}"[:300])
            raise ServiceError(502, "gateway_unavailable",
                               "The payment gateway is not answering; please try again in a moment.",
                               {"transaction_id": tx.id}) from None
    return (201 if created else 200), _initiation_body(tx)


def initiate_payment(order_id: str, amount: int | None, idempotency_key: str | None,
                     request_body: dict) -> tuple[int, dict]:
    """Start (or reuse) the order's payment and return ``(http_status, body)``.

    With an Idempotency-Key the first answer, success or refusal, is stored and replayed.
    """
    if idempotency_key is None:
        return _answer(order_id, amount, None)
    held = idempotency.begin(idempotency_key, "initiate-payment", idempotency.fingerprint(request_body))
    if not isinstance(held, idempotency.Claim):
        return held.status_code, held.response  # the stored answer, replayed
    try:
        status, body = _answer(order_id, amount, idempotency_key)
    except Exception:
        idempotency.release(held)
        raise
    idempotency.finish(held, status, body)
    return status, body


def _answer(order_id: str, amount: int | None, key: str | None) -> tuple[int, dict]:
    try:
        return _start(order_id, amount, key)
    except ServiceError as refusal:
        return refusal.status, refusal.to_dict()


def payment_status(transaction_id: str) -> dict:
    """The JSON of GET /check-payment-status."""
    return get_transaction(transaction_id).to_status_dict()
