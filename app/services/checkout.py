"""The shopper's side of a payment: start it from a page, cancel it, check it on return, look it up.

Every status move goes through apply_status. The gateway is asked on the shopper's behalf at
most once per RETURN_CHECK_INTERVAL per transaction, however often pages are reloaded; the
claim is a conditional UPDATE on ``transactions.last_checked_at``, so concurrent requests and
processes agree on who asks.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from sqlalchemy import or_, select, update

from app.domain.status import Status
from app.extensions import db
from app.gateways.base import GatewayError
from app.gateways.registry import get_gateway
from app.models import Order, OrderStatus, Transaction
from app.models.clock import find_by_id, utcnow
from app.services import timeline
from app.services.errors import ServiceError
from app.services.payments import get_transaction, initiate_payment, open_payment
from app.services.gateway_reports import apply_gateway_answer, close_session

log = logging.getLogger(__name__)

SOURCE = "shopper"
RETURN_CHECK_INTERVAL = timedelta(seconds=10)
ACCESS_CODE_LENGTH = 10
_NOT_CODE = re.compile(r"[\s\-]+")


def start_payment(order_id: str) -> dict:
    """Start (or reuse) the order's payment for a page; the initiation body, or a ServiceError.

    The amount always comes from the stored order. A refusal (unknown order, already paid,
    gateway down) is raised with the API's status, code and message.
    """
    status, body = initiate_payment(order_id, None, None, {"order_id": order_id})
    if status >= 400:
        extra = {k: v for k, v in body.items() if k not in ("error", "message")}
        raise ServiceError(status, body.get("error", "payment_not_started"),
                           body.get("message", "The payment could not be started."), extra)
    return body


def payment_in_progress(order_id: str):
    """The order's payment in progress (the one initiation would hand out again), if any."""
    return open_payment(order_id, utcnow())


def cancel_payment(transaction_id: str) -> Status:
    """Cancel a pending payment at the shopper's request; returns the status it ends in.

    The gateway session is expired first, so the hosted page can no longer take the card.
    When the gateway answers that the shopper already paid, the payment becomes success if
    the gateway's record of it carries the right money (and the order is fulfilled once).
    A payment that is no longer pending is left as it is.
    Raises ServiceError 502 when the gateway cannot be reached; the payment stays pending.
    """
    tx = get_transaction(transaction_id)
    if tx.status != Status.PENDING.value:
        return Status(tx.status)
    try:
        close_session(tx.id, Status.CANCELLED, source=SOURCE, summary="cancelled by the shopper")
    except GatewayError as exc:
        timeline.record_failure(tx.id, "gateway", SOURCE, f"cancel: expiring the session failed: {exc}")
        log.warning("txn=%s shopper cancel: gateway expire failed: %s", tx.id, exc)
        raise ServiceError(502, "gateway_unavailable",
                           "We could not reach the payment service to cancel. Please try again.") from None
    status = Status(db.session.get(Transaction, tx.id, populate_existing=True).status)
    log.info("txn=%s shopper cancel: now %s", tx.id, status)
    return status


def _claim_return_check(transaction_id: str) -> bool:
    """Take this transaction's shopper check slot: at most one per RETURN_CHECK_INTERVAL."""
    now = utcnow()
    won = db.session.execute(
        update(Transaction)
        .where(
            Transaction.id == transaction_id,
            Transaction.status == Status.PENDING.value,
            or_(Transaction.last_checked_at.is_(None), Transaction.last_checked_at <= now - RETURN_CHECK_INTERVAL),
        )
        .values(last_checked_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return won == 1


def check_on_return(transaction_id: str) -> bool:
    """Ask the gateway for a pending payment's status once, as the shopper comes back from it.

    So a shopper whose webhook was lost or is late sees the result now rather than after the
    reconciliation poller's wait. Rate-limited per transaction; returns True when the gateway
    was asked. A gateway fault is logged and leaves the payment pending (the page keeps waiting).
    """
    if not _claim_return_check(transaction_id):
        return False
    tx = get_transaction(transaction_id)
    try:
        answer = get_gateway().fetch_status(tx.id)
    except GatewayError as exc:
        timeline.record_failure(tx.id, "poll", SOURCE, f"return check failed: {exc}")
        log.warning("txn=%s return check: gateway failed: %s", tx.id, exc)
        return True
    if answer is None or answer.status == Status.PENDING:
        log.info("txn=%s return check: gateway says %s", tx.id, "nothing" if answer is None else "pending")
        return True
    log.info("txn=%s return check: gateway says %s", tx.id, answer.status)
    apply_gateway_answer(answer, source=SOURCE, summary=f"return check: gateway says {answer.status.value}")
    return True


def payment_after_return_check(transaction_id: str, check: Callable[[str], None]) -> Transaction:
    """The pending payment as it stands after ``check`` (the page's bounded wait for
    ``check_on_return``, run in another session) has had its turn.

    This request's read is ended first, so the check's writes are not waiting on it and what
    is read afterwards is the database's state now, not the state this request first saw.
    """
    db.session.commit()
    check(transaction_id)
    db.session.expire_all()
    return get_transaction(transaction_id)


def normalise_access_code(text: str) -> str:
    """The access code as stored: upper case, without the spaces and dashes people type."""
    return _NOT_CODE.sub("", text or "").upper()


def display_access_code(code: str) -> str:
    """The access code as shown to a person: two groups of five, ``ABCDE-FGHJK``."""
    return f"{code[:5]}-{code[5:]}" if len(code) == ACCESS_CODE_LENGTH else code


@dataclass(frozen=True)
class PaymentLookup:
    """What /payment-status shows: the order, and its paid or newest transaction (if any)."""

    order: Order
    transaction: Transaction | None


def find_payment(order_id: str, access_code: str) -> PaymentLookup | None:
    """The order and its payment when ``access_code`` is the order's; None otherwise.

    An unknown order and a wrong code give the same None, so order ids cannot be probed.
    """
    order_id = (order_id or "").strip()
    code = normalise_access_code(access_code)
    order = find_by_id(Order, order_id)
    expected = order.access_code if order is not None else "0" * ACCESS_CODE_LENGTH
    matches = hmac.compare_digest(expected.encode(), code.encode()[:64])
    if order is None or not matches:
        log.info("payment lookup refused for order id of %d characters", len(order_id))
        return None
    tx = None
    if order.status != OrderStatus.OPEN.value and order.paid_transaction_id:
        tx = db.session.get(Transaction, order.paid_transaction_id)
    if tx is None:
        tx = db.session.scalar(
            select(Transaction).where(Transaction.order_id == order.id)
            .order_by(Transaction.created_at.desc(), Transaction.id.desc()).limit(1)
        )
    return PaymentLookup(order, tx)
