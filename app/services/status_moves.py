"""apply_status: the ONE function that moves a transaction's status, for every caller.

It consults the pure transition table, writes the move as a compare-and-set UPDATE on
the old status, records a timeline line whatever the outcome, and lets only the caller
whose UPDATE won mark the order paid, fulfill it and emit the realtime update, after the
commit. Races between webhooks, polls, ops and processes resolve in the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import and_, bindparam, case, func, select

from app.domain.status import Decision, Outcome, Status, decide
from app.extensions import db
from app.metrics import STATUS_MOVES
from app.models import Order, OrderStatus, Transaction
from app.models.clock import plausible_id, utcnow
from app.services import timeline
from app.services.errors import transaction_not_found

log = logging.getLogger(__name__)
DUPLICATE_PAYMENT = "duplicate_payment_refund_owed"  # the review reason of a second payment of a paid order

# The writes of a move as Core statements built once: they run on every webhook, poll and
# ops action, and a cached statement with bound values skips the ORM's per-call work.
_transactions, _orders = Transaction.__table__, Order.__table__
_MOVE = (  # the compare-and-set: applies only while the row still has the status decided on
    _transactions.update()
    .where(_transactions.c.id == bindparam("tx_id"), _transactions.c.status == bindparam("from_status"))
    .values(status=bindparam("to_status"), updated_at=bindparam("now"), next_check_at=None, lease_until=None)
    .returning(_transactions.c.refund_reported)  # read under the row's lock: see apply_status
)
_PAY_ORDER = (  # the order is paid once: only while it is still open
    _orders.update()
    .where(_orders.c.id == bindparam("order_id"), _orders.c.status == OrderStatus.OPEN.value)
    .values(status=OrderStatus.PAID.value, paid_transaction_id=bindparam("tx_id"), paid_at=bindparam("now"),
            updated_at=bindparam("now"), fulfillment_claimed_at=bindparam("now"),
            fulfillment_attempts=_orders.c.fulfillment_attempts + 1)
)
_FLAG = (  # a flag adds its reason to those still open, so none is lost before ops see it
    _transactions.update()
    .where(_transactions.c.id == bindparam("tx_id"))
    .values(needs_review=True, reviewed_at=None, reviewed_by=None, flagged_at=bindparam("now"), review_reason=case(
        (and_(_transactions.c.needs_review.is_(True), _transactions.c.review_reason.is_not(None),
              func.length(_transactions.c.review_reason) < 150),
         case((_transactions.c.review_reason.contains(bindparam("reason")), _transactions.c.review_reason),
              else_=_transactions.c.review_reason + ", " + bindparam("reason"))),
        else_=bindparam("reason"),
    ))
)


@dataclass(frozen=True)
class TxState:
    """What a move needs to know of a transaction, read in one round trip."""

    id: str
    order_id: str
    status: Status
    amount: int
    currency: str
    closing_as: Status | None = None  # what we asked the gateway to close the session as, if we did
    refund_reported: Status | None = None  # a refund the gateway reported before the success was applied


_READ = select(_transactions.c.id, _transactions.c.order_id, _transactions.c.status, _transactions.c.amount,
               _transactions.c.currency, _transactions.c.closing_as, _transactions.c.refund_reported,
               ).where(_transactions.c.id == bindparam("tx_id"))
_READ_LOCKED = _READ.with_for_update(key_share=True)  # FOR NO KEY UPDATE: timeline rows may still reference it


def read_state(transaction_id: str, *, lock: bool = False) -> TxState | None:
    """The transaction's current state as the database has it now, or None when unknown; with
    ``lock``, its row stays locked until the caller's commit (on PostgreSQL)."""
    if not plausible_id(transaction_id):
        return None
    row = db.session.connection().execute(_READ_LOCKED if lock else _READ, {"tx_id": transaction_id}).first()
    if row is None:
        return None
    return TxState(row.id, row.order_id, Status(row.status), row.amount, row.currency,
                   Status(row.closing_as) if row.closing_as else None,
                   Status(row.refund_reported) if row.refund_reported else None)


@dataclass(frozen=True)
class MoveResult:
    transaction_id: str
    decision: Decision
    order_paid: bool = False  # this move made the order paid (so this caller fulfills it)
    flagged: str | None = None
    claimed_at: datetime | None = None  # when the order's fulfillment claim was taken, if order_paid
    # A refund the gateway reported before this success (transactions.refund_reported): the
    # handler was not run, and the caller applies the refund first (gateway_reports).
    refund_first: Status | None = None

    @property
    def applied(self) -> bool:
        return self.decision.outcome == Outcome.APPLIED


def _mark_order_paid(tx: TxState, now) -> str | None:
    """Pay the order with ``tx`` unless another transaction already did; returns a flag reason.

    The winner also takes the order's fulfillment claim in the same UPDATE, so the handler
    runs right after the commit without a second round trip.
    """
    won = db.session.connection().execute(_PAY_ORDER, {"order_id": tx.order_id, "tx_id": tx.id, "now": now}).rowcount
    if won == 1:
        return None
    paid_by = db.session.scalar(select(Order.paid_transaction_id).where(Order.id == tx.order_id))
    return None if paid_by == tx.id else DUPLICATE_PAYMENT


def flag_as_read(review_reason: str | None, flagged_at) -> list:
    """Conditions for a compare-and-set on a transaction's review flag: its reasons and when a
    reason was last raised are still as read (a reason raised again changes the second)."""
    return [Transaction.review_reason.is_not_distinct_from(review_reason),
            Transaction.flagged_at.is_not_distinct_from(flagged_at)]


def flag_for_review(tx_id: str, reason: str) -> None:
    """Set the needs-review flag with ``reason`` added to any reasons still open (in the caller's
    database transaction)."""
    db.session.connection().execute(_FLAG, {"tx_id": tx_id, "reason": reason, "now": utcnow()})


def apply_status(
    transaction_id: str,
    target: Status,
    *,
    source: str,
    summary: str = "",
    detail: dict | None = None,
    actor: str | None = None,
    before_commit: Callable[[Decision], None] | None = None,
    known: TxState | None = None,
) -> MoveResult:
    """Move the transaction to ``target`` if the table allows it, and commit.

    Joins the caller's open database transaction (so a webhook's dedup row commits with
    the move); ``before_commit`` lets the caller add its own rows to that commit, and
    ``known`` spares a read the caller just made. A move to success that pays the order
    runs the fulfillment handler after the commit, unless the gateway reported a refund of
    the payment first (``refund_first``): the caller then holds the order's claim
    (``claimed_at``) and applies the refund before anything ships. Returns what happened;
    raises ServiceError 404 for an unknown transaction.
    """
    for attempt in range(10):
        # The caller's read may be stale by now: the compare-and-set below catches that, and
        # every retry reads the row afresh.
        tx = known if attempt == 0 and known is not None else read_state(transaction_id)
        if tx is None:
            raise transaction_not_found()
        current = tx.status
        decision = decide(current, target)
        if decision.outcome != Outcome.APPLIED:
            timeline.record(
                tx.id, "status", source, summary or f"{decision.outcome.value}: {current} -> {target}",
                outcome=decision.outcome.value, from_status=current, to_status=target, detail=detail, actor=actor,
            )
            if before_commit:
                before_commit(decision)
            db.session.commit()
            log.info("txn=%s status %s->%s %s (source=%s)", transaction_id, current, target, decision.outcome,
                     source)
            STATUS_MOVES.labels(source, target.value, decision.outcome.value).inc()
            return MoveResult(transaction_id, decision)

        now = utcnow()
        moved = db.session.connection().execute(
            _MOVE, {"tx_id": tx.id, "from_status": current.value, "to_status": target.value, "now": now}
        ).first()
        if moved is None:
            continue  # another writer moved it first: read again and decide again
        # Read by the move itself, under the row's lock: a refund report that came first (and
        # locked the row to remember it) is seen here, however the two deliveries raced.
        refund_first = Status(moved.refund_reported) if target == Status.SUCCESS and moved.refund_reported else None

        flag = decision.flag_reason
        order_paid = False
        if target == Status.SUCCESS:
            duplicate = _mark_order_paid(tx, now)
            order_paid = duplicate is None
            flag = duplicate or flag
        if flag:
            flag_for_review(tx.id, flag)
            timeline.record(tx.id, "flag", source, f"flagged for review: {flag}", outcome="flagged", actor=actor)
        if target == Status.REFUNDED:
            from app.services.fulfillment import hold_refunded_order

            hold_refunded_order(tx.order_id, tx.id, source, actor)
        timeline.record(
            tx.id, "status", source, summary or f"status {current} -> {target}",
            outcome=Outcome.APPLIED.value, from_status=current, to_status=target, detail=detail, actor=actor,
        )
        if before_commit:
            before_commit(decision)
        order_id = tx.order_id  # read before the commit expires the object (no reload after it)
        db.session.commit()
        log.info("txn=%s status %s->%s applied (source=%s%s)", transaction_id, current, target, source,
                 f", flagged={flag}" if flag else "")
        STATUS_MOVES.labels(source, target.value, Outcome.APPLIED.value).inc()

        from app.realtime import notify_status  # realtime imports services; keep the cycle lazy

        notify_status(transaction_id, target.value)  # every committed change is pushed (contract 5)
        if order_paid and refund_first is None:  # else the caller applies the refund first, then decides
            from app.services.fulfillment import run_claimed

            run_claimed(order_id, transaction_id, now, source=source)
        return MoveResult(transaction_id, decision, order_paid=order_paid, flagged=flag,
                          claimed_at=now if order_paid else None, refund_first=refund_first)
    raise RuntimeError(f"status of {transaction_id} kept changing under apply_status")
