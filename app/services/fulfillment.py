"""Fulfilling a paid order: the FULFILLMENT_HANDLER runs once per order.

A claim (a compare-and-set on ``fulfillment_claimed_at``) makes sure only one process runs
the handler at a time; when it returns the order becomes fulfilled and is never handed to
the handler again. A handler that raises leaves the order paid, the error on the timeline,
and the claim released, so the next reconciliation pass retries it. A process that dies
mid-handler holds the claim until FULFILLMENT_LEASE_SECONDS pass, after which the order is
retried: the handler must return well within the lease (15 minutes by default), and should
be idempotent on the order id, because a crash between its side effect and our commit
cannot be told apart from a crash before it.
"""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from typing import Callable

from flask import current_app
from sqlalchemy import bindparam, exists, or_, select, update

from app.domain.status import Status
from app.connections import retry_on_lost_connection
from app.extensions import db
from app.metrics import FULFILLMENTS
from app.models import Order, OrderStatus, Transaction
from app.models.clock import utcnow
from app.services import one_statement, timeline

log = logging.getLogger(__name__)

_orders = Order.__table__
_FINISH = (  # built once: it runs after every paid order's handler; only the claim holder finishes
    _orders.update()
    .where(_orders.c.id == bindparam("order_id"), _orders.c.status == OrderStatus.PAID.value,
           _orders.c.fulfillment_claimed_at == bindparam("claimed_at"))
    .values(status=OrderStatus.FULFILLED.value, fulfilled_at=bindparam("done"), updated_at=bindparam("done"),
            fulfillment_claimed_at=None)
)


def log_fulfillment(order_id: str, transaction_id: str) -> None:
    """The built-in handler: records that the order would ship now."""
    log.info("order=%s txn=%s built-in fulfillment handler: nothing to ship", order_id, transaction_id)


def load_handler(path: str) -> Callable[[str, str], object]:
    """Resolve ``package.module:function``; raises ValueError when it names nothing callable."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"FULFILLMENT_HANDLER must look like package.module:function, got {path!r}")
    handler = getattr(importlib.import_module(module_name), attr, None)
    if not callable(handler):
        raise ValueError(f"FULFILLMENT_HANDLER {path!r} is not callable")
    return handler


# A payment refunded in full before its order was fulfilled: the order is never handed to the
# handler after that (shipping it would give the goods away); it stays paid, as the timeline says.
# A full refund the gateway reported before the success counts too, applied or not yet, and so
# does one asked for here whose answer is not in (its amount is held in refunded_amount, being
# sent or with its outcome unknown): if the gateway made it, shipping gives the goods away; if it
# did not, the refund is released and the next pass hands the order over.
_NOT_REFUNDED = ~exists().where(Transaction.id == Order.paid_transaction_id,
                                or_(Transaction.status == Status.REFUNDED.value,
                                    Transaction.refund_reported == Status.REFUNDED.value,
                                    Transaction.refunded_amount >= Transaction.amount))


def _lease_start(now):
    """Claims taken before this have outlived their lease."""
    return now - timedelta(seconds=current_app.config["FULFILLMENT_LEASE_SECONDS"])


def _claim_free(now):
    """Orders whose claim is free: never taken, released, or outlived its lease."""
    return or_(Order.fulfillment_claimed_at.is_(None), Order.fulfillment_claimed_at < _lease_start(now))


def fulfill_order(order_id: str, *, source: str = "system") -> bool:
    """Claim a paid order nobody is fulfilling and run its handler; True when this call fulfilled it."""
    now = utcnow()
    claimed = db.session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == OrderStatus.PAID.value, _claim_free(now), _NOT_REFUNDED)
        .values(fulfillment_claimed_at=now, fulfillment_attempts=Order.fulfillment_attempts + 1)
        .returning(Order.paid_transaction_id)
        .execution_options(synchronize_session=False)
    ).first()
    db.session.commit()  # and no statement after it: the handler runs with no transaction open
    if claimed is None:
        return False
    return run_claimed(order_id, claimed.paid_transaction_id, now, source=source)


def run_claimed(order_id: str, transaction_id: str, claimed_at, *, source: str = "system") -> bool:
    """Run the handler for an order whose claim (taken at ``claimed_at``) this caller holds.

    The caller has committed: no database transaction is open while the handler runs (minutes,
    perhaps), so no connection sits idle in one for a timeout, a failover or a pooler to end.
    Once the handler returns, its return is recorded even if the connection breaks under the
    write: it is retried on a fresh one (``retry_on_lost_connection``) rather than left for
    the lease to run out and the handler to be run again.
    """
    try:
        load_handler(current_app.config["FULFILLMENT_HANDLER"])(order_id, transaction_id)
    except Exception as exc:  # the handler is someone else's code: record, release, retry later
        log.exception("order=%s txn=%s fulfillment handler failed", order_id, transaction_id)
        db.session.rollback()
        release_claim(order_id, claimed_at)
        timeline.record(
            transaction_id, "fulfillment", source, f"fulfillment handler failed: {type(exc).__name__}: {exc}"[:500],
            outcome="error",
        )
        db.session.commit()
        FULFILLMENTS.labels("error").inc()
        return False
    done = utcnow()
    finished = retry_on_lost_connection(lambda: _finish(order_id, transaction_id, claimed_at, done, source),
                                        what=f"recording order {order_id} fulfilled")
    if not finished:
        # Our claim outlived its lease and was taken over: the handler overran
        # FULFILLMENT_LEASE_SECONDS. Say so loudly; whoever holds the claim now finishes.
        log.error("order=%s txn=%s handler returned after its claim was taken over (lease %ss too short?)",
                  order_id, transaction_id, current_app.config["FULFILLMENT_LEASE_SECONDS"])
        timeline.record(transaction_id, "fulfillment", source,
                        "handler returned after its claim lease ran out; another run holds the order",
                        outcome="error")
        db.session.commit()
        return False
    log.info("order=%s txn=%s fulfilled", order_id, transaction_id)
    FULFILLMENTS.labels("fulfilled").inc()
    return True


def _finish(order_id: str, transaction_id: str, claimed_at, done, source: str) -> bool:
    """Mark the order fulfilled under the claim taken at ``claimed_at`` and commit; False when
    the claim was taken over. Safe to run again: a commit whose answer was lost has stamped
    the order with ``done``, and that is recognised as this run's own write. On PostgreSQL the
    write shares its statement with other orders finishing at the same moment (group_writes)."""
    finished = one_statement.update_and_record(
        _FINISH, {"order_id": order_id, "claimed_at": claimed_at, "done": done},
        [timeline.line(transaction_id, "fulfillment", source, "order fulfilled", outcome="ok")], name="fulfilled")
    if finished != 1:
        db.session.rollback()
        return db.session.scalar(select(Order.fulfilled_at).where(Order.id == order_id)) == done
    return True


def release_claim(order_id: str, claimed_at) -> None:
    """Give up the order's fulfillment claim taken at ``claimed_at`` (in the caller's database
    transaction); a claim taken over since is left alone."""
    db.session.execute(
        update(Order)
        .where(Order.id == order_id, Order.fulfillment_claimed_at == claimed_at)
        .values(fulfillment_claimed_at=None)
        .execution_options(synchronize_session=False)
    )


def hold_refunded_order(order_id: str, transaction_id: str, source: str, actor: str | None) -> None:
    """Say on the timeline that the order its payment paid will not be fulfilled, when the
    payment is refunded in full before the order was (in the caller's database transaction).
    The handler is not run for it after this: ``fulfill_order`` and the retry list skip it."""
    order = db.session.execute(select(Order.status, Order.fulfillment_claimed_at).where(
        Order.id == order_id, Order.paid_transaction_id == transaction_id)).first()
    if order is None or order.status != OrderStatus.PAID.value:
        return
    line = "refunded in full before the order was fulfilled: the order will not be handed to the fulfillment handler"
    if order.fulfillment_claimed_at is not None and order.fulfillment_claimed_at >= _lease_start(utcnow()):
        line += " (a run already under way, if any, still completes)"
    timeline.record(transaction_id, "fulfillment", source, line, outcome="held", actor=actor)
    log.warning("order=%s txn=%s %s", order_id, transaction_id, line)


def awaiting_fulfillment() -> list:
    """Conditions on Order for a paid order still owed its handler's run: not held because its
    payment was refunded in full (or a full refund of it is still unanswered)."""
    return [Order.status == OrderStatus.PAID.value, _NOT_REFUNDED]


def orders_awaiting_fulfillment(limit: int = 100) -> list[str]:
    """Paid orders whose handler has not returned yet (for reconciliation to retry), except
    those whose payment was refunded in full first.

    Least-tried first, then oldest: orders whose handler keeps failing sink below new ones,
    so a few broken orders never starve the rest.
    """
    return list(
        db.session.scalars(
            select(Order.id)
            .where(*awaiting_fulfillment(), _claim_free(utcnow()))
            .order_by(Order.fulfillment_attempts, Order.paid_at)
            .limit(limit)
        )
    )
