"""apply_status: the ONE function that moves a transaction's status, for every caller.

It consults the pure transition table, writes the move as a compare-and-set UPDATE on
the old status, records a timeline line whatever the outcome, and lets only the caller
whose UPDATE won mark the order paid, fulfill it and emit the realtime update, after the
commit. Races between webhooks, polls, ops and processes resolve in the database.

``apply_reported_success`` is its route of one statement on PostgreSQL for the move it makes
most (a success delivered for a pending payment): the same table, the same compare-and-set and
the same rows, or nothing written and the general route taken. Deliveries arriving together
share that statement (group_writes), each still its own compare-and-set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Callable

from sqlalchemy import and_, bindparam, case, exists, func, literal_column, select
from sqlalchemy.exc import DBAPIError

from app.connections import OutcomeUnknown, lost_connection, retry_on_lost_connection
from app.domain.status import Decision, Outcome, Status, decide
from app.extensions import db
from app.metrics import STATUS_MOVES
from app.models import Order, OrderStatus, Transaction, TransactionEvent, WebhookEvent
from app.models.clock import plausible_id, utcnow
from app.services import group_writes, one_statement, timeline
from app.services.errors import transaction_not_found

log = logging.getLogger(__name__)
DUPLICATE_PAYMENT = "duplicate_payment_refund_owed"  # the review reason of a second payment of a paid order

# The writes of a move as Core statements built once: they run on every webhook, poll and
# ops action, and a cached statement with bound values skips the ORM's per-call work.
_transactions, _orders, _events = Transaction.__table__, Order.__table__, TransactionEvent.__table__
_webhook_events = WebhookEvent.__table__
# What a move writes, and what paying its order writes (the winner also takes the order's
# fulfillment claim): shared by the general route and the one-statement route below.
_MOVED_VALUES = dict(status=bindparam("to_status"), updated_at=bindparam("now"), next_check_at=None, lease_until=None)
_PAID_VALUES = dict(status=OrderStatus.PAID.value, paid_transaction_id=bindparam("tx_id"), paid_at=bindparam("now"),
                    updated_at=bindparam("now"), fulfillment_claimed_at=bindparam("now"),
                    fulfillment_attempts=_orders.c.fulfillment_attempts + 1)
_MOVE_ROW = (  # the compare-and-set: applies only while the row still has the status decided on
    _transactions.update()
    .where(_transactions.c.id == bindparam("tx_id"), _transactions.c.status == bindparam("from_status"))
    .values(**_MOVED_VALUES)
)
_MOVE = _MOVE_ROW.returning(_transactions.c.refund_reported)  # read under the row's lock: see apply_status
_PAY_ORDER = (  # the order is paid once: only while it is still open
    _orders.update()
    .where(_orders.c.id == bindparam("order_id"), _orders.c.status == OrderStatus.OPEN.value)
    .values(**_PAID_VALUES)
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
        db.session.commit()
        # the fulfillment handler runs here unless the caller must apply a refund first, then decide
        _after_move(tx.id, tx.order_id, decision, source, now, flag=flag, fulfil=order_paid and refund_first is None)
        return MoveResult(transaction_id, decision, order_paid=order_paid, flagged=flag,
                          claimed_at=now if order_paid else None, refund_first=refund_first)
    raise RuntimeError(f"status of {transaction_id} kept changing under apply_status")


def _after_move(transaction_id: str, order_id: str, decision: Decision, source: str, now: datetime, *,
                flag: str | None, fulfil: bool) -> None:
    """What follows a committed move: its log line and count, the realtime push, and, with
    ``fulfil``, the handler of the order the move paid (its claim was taken at ``now``)."""
    log.info("txn=%s status %s->%s applied (source=%s%s)", transaction_id, decision.current, decision.target, source,
             f", flagged={flag}" if flag else "")
    STATUS_MOVES.labels(source, decision.target.value, Outcome.APPLIED.value).inc()

    from app.realtime import notify_status  # realtime imports services; keep the cycle lazy

    notify_status(transaction_id, decision.target.value)  # every committed change is pushed (contract 5)
    if fulfil:
        from app.services.fulfillment import run_claimed

        run_claimed(order_id, transaction_id, now, source=source)


@cache
def _successes_statement():
    """The success statement of ``apply_reported_success``, for any number of deliveries at once
    (group_writes), made of the general route's own statements (_MOVE_ROW, _PAY_ORDER) with each
    delivery's values: its compare-and-set from pending (with the money and no refund reported
    first; and its webhook-id not stored yet, so a redelivery does not fail the others'
    statement), its order paid with its claim, then its timeline lines and its delivery row,
    written only if its own move was. The last column divides by zero unless every payment that
    moved paid an order of its own (one was paid already, or two payments of one order were in
    the statement): that undoes the whole statement, whose items are then written one by one."""
    item = one_statement.items({"tx_id": _transactions.c.id.type, "amount": _transactions.c.amount.type,
                                "currency": _transactions.c.currency.type, "now": _transactions.c.updated_at.type,
                                "gateway": _webhook_events.c.gateway.type,
                                "webhook_id": _webhook_events.c.webhook_id.type})
    seen = _webhook_events
    moved = (
        one_statement.substituted(_MOVE_ROW, {"tx_id": item.c.tx_id, "now": item.c.now})
        .where(_transactions.c.amount == item.c.amount, _transactions.c.currency == item.c.currency,
               _transactions.c.refund_reported.is_(None),
               ~exists().where(seen.c.gateway == item.c.gateway, seen.c.webhook_id == item.c.webhook_id))
        .returning(item.c.n, _transactions.c.id, _transactions.c.order_id, item.c.now)
        .cte("moved")
    )
    paid = (one_statement.substituted(_PAY_ORDER, {"order_id": moved.c.order_id, "tx_id": moved.c.id,
                                                   "now": moved.c.now})
            .returning(_orders.c.id).cte("paid"))
    # Every payment moved paid an order of its own (an order paid already, or two payments of one
    # order in the statement, pay fewer orders than payments moved): else a division by zero.
    guard = literal_column("1") / case((one_statement.count(paid) == one_statement.count(moved), 1), else_=0)
    return select(moved.c.n, moved.c.order_id, guard.label("all_or_nothing")).add_cte(
        one_statement.rows_written_by(moved, _events, timeline.COLUMNS, "lines"),
        one_statement.rows_written_by(moved, seen, tuple(c.name for c in seen.columns if c.name != "id"), "deliveries"))


@dataclass(frozen=True)
class _Success:
    """One delivery's part of the success statement."""

    transaction_id: str
    amount: int
    currency: str
    now: datetime
    lines: list[dict]
    delivery: dict

    def keys(self) -> tuple:
        """Rows only one item of a statement may touch: its payment, and its delivery's key."""
        return ("txn", self.transaction_id), ("delivery", self.delivery["gateway"], self.delivery["webhook_id"])


def _write_successes(items: list[_Success]) -> list[str | None | Exception]:
    """For each item, the order its move paid, or None when it wrote nothing (a statement refused
    for it: the general route, in the caller's request, meets the same), or its error."""
    return one_statement.each_written(_successes_in_one, items, if_refused=lambda _exc: None)


def _successes_in_one(items: list[_Success], shared: bool) -> list[str | None]:
    decision = decide(Status.PENDING, Status.SUCCESS)
    params = {"from_status": decision.current.value, "to_status": decision.target.value,
              "items": one_statement.item_params([
                  {"tx_id": item.transaction_id, "amount": item.amount, "currency": item.currency, "now": item.now,
                   "gateway": item.delivery["gateway"], "webhook_id": item.delivery["webhook_id"]}
                  for item in items]),
              "lines": one_statement.rows_of([item.lines for item in items]),
              "deliveries": one_statement.rows_of([[item.delivery] for item in items])}
    paid = {row.n: row.order_id for row in one_statement.run_all(_successes_statement(), params, shared=shared)}
    return [paid.get(n) for n in range(len(items))]


_PAID_BY_MOVE = select(_orders.c.id).where(_orders.c.paid_transaction_id == bindparam("tx_id"),
                                           _orders.c.fulfillment_claimed_at == bindparam("now"))


def _paid_by_move(transaction_id: str, now: datetime) -> str | None:
    """The order a move of ``transaction_id`` stamped at ``now`` paid (and claimed), if it committed."""
    order_id = db.session.connection().execute(_PAID_BY_MOVE, {"tx_id": transaction_id, "now": now}).scalar()
    db.session.commit()  # nothing stays open: the handler runs next
    return order_id


def apply_reported_success(transaction_id: str, amount: int, currency: str, *, source: str, detail: dict,
                           lines: list[dict], delivery: dict) -> MoveResult | None:
    """apply_status's route of one statement, on PostgreSQL, for the report it gets most: a
    success for a pending payment, with the payment's money, whose order is still open.

    The transition table decides the move as for any caller; the compare-and-set, the order
    paid with its fulfillment claim, the timeline (``lines`` then the move's own line) and the
    ``delivery`` row (webhook_events) are then one statement, committed alone, shared with the
    other deliveries being written at that moment (group_writes): one round trip where
    apply_status takes several. Anything else (another status, other money, a refund reported
    first, an order already paid, the delivery's webhook-id already stored, an unknown payment,
    or SQLite) writes nothing and returns None: the caller then takes the general route, which
    handles every case. After the commit it goes on as apply_status does (push, handler).
    """
    decision = decide(Status.PENDING, Status.SUCCESS)
    if (decision.outcome != Outcome.APPLIED or decision.flag_reason or not plausible_id(transaction_id)
            or type(amount) is not int or not isinstance(currency, str)  # else SQL's casts would bend them
            or not one_statement.usable()):
        return None
    now = utcnow()
    moves = timeline.line(transaction_id, "status", source, f"status {decision.current} -> {decision.target}",
                          outcome=Outcome.APPLIED.value, from_status=decision.current, to_status=decision.target,
                          detail=detail)
    item = _Success(transaction_id, amount, currency, now, [*lines, moves], delivery)
    try:
        order_id = group_writes.writer("successes", _write_successes, _Success.keys).submit(item)
    except (DBAPIError, OutcomeUnknown) as exc:
        if not lost_connection(exc):
            raise
        # It may have committed before its answer was lost: look, on a fresh connection. If it
        # did, go on (push, handler) rather than leave the order to wait out its claim's lease.
        order_id = retry_on_lost_connection(lambda: _paid_by_move(transaction_id, now),
                                            what=f"finding out whether txn {transaction_id}'s success was written")
        if order_id is None:
            raise  # it was not: the request answers 503 and the gateway delivers again
        log.warning("txn=%s connection lost under its success statement, which had committed", transaction_id)
    else:
        if order_id is None:  # not moved: nothing was written
            return None
    _after_move(transaction_id, order_id, decision, source, now, flag=None, fulfil=True)
    return MoveResult(transaction_id, decision, order_paid=True, claimed_at=now)
