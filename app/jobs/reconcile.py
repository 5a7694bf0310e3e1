"""One reconciliation pass: retry fulfillment, expire overdue payments, ask the gateway about due ones.

Webhooks get lost, so the pass asks instead. First, refunds the gateway reported before a
payment's success are applied after it (so a refunded order never ships), and refunds confirmed
here whose payment was not moved after them (a process stopped between the two) move it.
Then its three stages, in this order:

1. paid orders whose fulfillment handler failed earlier are handed to it again;
2. pending transactions older than PAYMENT_EXPIRES_AFTER are expired at the gateway
   (a 409 means the shopper paid: the payment becomes success and the order is fulfilled);
3. pending transactions older than PAYMENT_STATUS_CHECK_AFTER (and not backing off) get their
   status fetched and applied; one that is still pending is asked again on a backoff.

Both windows are measured from ``created_at`` and read when the pass runs. After the stages,
refunds whose request was cut off are flagged for ops, and old records are pruned. Every
move goes through apply_status. Rows are claimed in batches (app.jobs.claims); gateway calls run in a
bounded thread pool, each worker in its own app context and database session, holding no
database transaction while it waits on the gateway. A worker whose answer moves a status
applies it itself (apply_status, which may run the fulfillment handler); the common quiet
answers (still pending, unknown, an error) come back to the pass, which writes them in bulk.
An error on one transaction is recorded on its timeline and the pass goes on.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from flask import Flask, current_app

from app.domain.status import Status
from app.extensions import db
from app.gateways.registry import get_gateway
from app.jobs import claims
from app.jobs.claims import Claim, Release
from app.jobs.housekeeping import prune_expired_records
from app.models import Order, OrderStatus, Transaction
from app.models.clock import utcnow
from app.services import timeline
from app.services.fulfillment import fulfill_order, orders_awaiting_fulfillment
from app.services.gateway_reports import MISMATCH, apply_gateway_answer, close_session, follow_remembered_refunds
from app.services.refunds import flag_unanswered_refunds, settle_refund_statuses

log = logging.getLogger(__name__)

# The gateway adapter keeps 64 pooled connections per host; more workers than that would open and
# discard connections on every call.
DEFAULT_WORKERS = 48
DEFAULT_BATCH = 200
SOURCE = "poller"


@dataclass
class PassSummary:
    """What one pass did.

    due: transactions claimed (for a status check or for expiry); checked: status checks the
    gateway answered (404 included); changed: status moves applied other than to expired;
    expired: moves to expired; errors: transactions or orders whose handling failed;
    fulfilled: paid orders whose retried fulfillment completed.
    """

    due: int = 0
    checked: int = 0
    changed: int = 0
    expired: int = 0
    errors: int = 0
    fulfilled: int = 0
    duration: float = 0.0

    def line(self) -> str:
        """The one-line summary logged after each pass and printed by `payments reconcile`."""
        return (f"reconcile: due={self.due} checked={self.checked} changed={self.changed} "
                f"expired={self.expired} errors={self.errors} fulfilled={self.fulfilled} "
                f"duration={self.duration:.3f}s")

    def count(self, outcome: str) -> None:
        for field in _OUTCOME_FIELDS[outcome]:
            setattr(self, field, getattr(self, field) + 1)


# What each per-item outcome adds to the summary.
_OUTCOME_FIELDS = {
    "pending": ("checked",),
    "unknown": ("checked",),
    "flagged": ("checked",),
    "changed": ("checked", "changed"),
    "unchanged": ("checked",),
    "paid": ("changed",),
    "expired": ("expired",),
    "raced": (),
    "error": ("errors",),
    "fulfilled": ("fulfilled",),
    "not_fulfilled": (),
}


@dataclass(frozen=True)
class Quiet:
    """An answer that moves nothing: the pass releases the claim in bulk and records ``line``."""

    outcome: str  # "pending", "unknown", "flagged" or "error"
    release: Release
    line: str | None = None  # a timeline summary, when the answer deserves one


def run_pass(
    *,
    workers: int = DEFAULT_WORKERS,
    batch_size: int = DEFAULT_BATCH,
    should_stop: Callable[[], bool] | None = None,
) -> PassSummary:
    """Run one pass in the current app context; logs and returns its summary.

    ``should_stop`` is asked before each new batch is claimed; work already claimed finishes.
    """
    app = current_app._get_current_object()
    started = time.monotonic()
    summary = PassSummary()
    stop = should_stop or (lambda: False)
    try:  # before fulfillment is retried: an order whose payment was refunded must not ship
        follow_remembered_refunds(source=SOURCE)
        settle_refund_statuses(source=SOURCE)
    except Exception:
        db.session.rollback()
        log.exception("bringing refunds into payments' statuses failed")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
        retry_fulfillment(app, pool, summary, batch_size=batch_size)
        now = utcnow()
        expire_cutoff = claims.overdue_at(now)
        check_cutoff = now - timedelta(seconds=app.config["PAYMENT_STATUS_CHECK_AFTER"])
        _drain(app, pool, summary, claims.due_for_expiry(expire_cutoff), expire_one,
               workers=workers, batch_size=batch_size, stop=stop)
        _drain(app, pool, summary, claims.due_for_check(now, check_cutoff, expire_cutoff), check_one,
               workers=workers, batch_size=batch_size, stop=stop)
    try:
        # A refund call takes at most the gateway budget: one still unanswered after twice that
        # was cut off, and its payment is flagged for ops with the amount held.
        flag_unanswered_refunds(timedelta(seconds=2 * app.config["GATEWAY_TOTAL_BUDGET"]))
        prune_expired_records()
    except Exception:  # housekeeping must never fail a pass
        db.session.rollback()
        log.exception("housekeeping failed")
    summary.duration = time.monotonic() - started
    # A pass that found nothing to do is not news: every worker runs one a minute.
    log.log(logging.INFO if summary.due or summary.errors or summary.fulfilled else logging.DEBUG, summary.line())
    return summary


def _drain(app: Flask, pool: ThreadPoolExecutor, summary: PassSummary, due, handler: Callable[[Claim], object],
           *, workers: int, batch_size: int, stop: Callable[[], bool]) -> None:
    """Claim due rows batch by batch, hand each to ``handler`` in the pool, write quiet answers back."""
    # No more than batch + workers claimed rows wait or run in the pool at a time, so each
    # finishes within its lease even if every gateway call before it uses its whole budget.
    rounds = math.ceil((batch_size + workers) / workers) + 1
    lease = timedelta(seconds=rounds * app.config["GATEWAY_TOTAL_BUDGET"])
    in_flight = 0  # claims handed to the pool and not yet back
    # Finished futures arrive here, so each is taken in O(1): concurrent.futures.wait() locks
    # every future still in flight on each call (this thread's CPU per pass: 0.10 s -> 0.06 s).
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    quiet: list[Quiet] = []
    cursor, exhausted = None, False
    while True:
        if not exhausted and in_flight <= workers:
            exhausted = stop()
            if not exhausted:
                now = utcnow()
                batch = claims.claim_batch(due, now=now, lease_until=now + lease, after=cursor, limit=batch_size)
                summary.due += len(batch)
                if log.isEnabledFor(logging.DEBUG):
                    for claim in batch:
                        log.debug("txn=%s claimed for %s until %s", claim.id, handler.__name__, claim.lease)
                for claim in batch:
                    pool.submit(_in_context, app, handler, claim).add_done_callback(finished.put)
                in_flight += len(batch)
                exhausted = len(batch) < batch_size
                cursor = claims.advance(cursor, batch)
                continue
        if not in_flight:
            break
        done = [finished.get()]
        while not finished.empty():
            done.append(finished.get())
        in_flight -= len(done)
        for future in done:
            result = future.result()
            if isinstance(result, Quiet):
                quiet.append(result)
                result = result.outcome
            summary.count(result)
        if len(quiet) >= batch_size or (exhausted and not in_flight):
            write_back(quiet)
            quiet = []
    write_back(quiet)


def write_back(quiet: list[Quiet]) -> None:
    """Release the claims of quiet answers and record their timeline lines, in one commit."""
    if not quiet:
        return
    for item in quiet:
        if item.line is not None:
            next_check = item.release.next_check_at
            timeline.record(item.release.claim.id, "poll", SOURCE, item.line, outcome=item.outcome,
                            detail={"next_check_at": next_check.isoformat() if next_check else None})
    claims.release_many([item.release for item in quiet])
    db.session.commit()


def _in_context(app: Flask, handler: Callable, item):
    """Run ``handler(item)`` in a worker thread with its own app context and session; a claim
    whose lease another process has taken while it waited is dropped ("raced")."""
    with app.app_context():
        try:
            if isinstance(item, Claim):
                held = claims.hold(item, utcnow())
                if held is None:
                    log.info("txn=%s claim lost while queued: another process has the row", item.id)
                    return "raced"
                item = held
            return handler(item)
        except Exception as exc:  # handlers catch what they expect; this is the last line of defence
            log.exception("%s failed on %s", handler.__name__, getattr(item, "id", item))
            db.session.rollback()
            if isinstance(item, Claim):
                return _error(item, f"{handler.__name__} failed", exc, reschedule=True)
            return "error"


def _error(claim: Claim, what: str, exc: Exception, *, reschedule: bool) -> Quiet:
    """A failed gateway call (or worse): recorded on the timeline, the row stays pending."""
    now = utcnow()
    message = f"{what}: {type(exc).__name__}: {exc}"[:500]
    log.warning("txn=%s %s", claim.id, message)
    next_check = now + claims.backoff(claim.attempts) if reschedule else None
    return Quiet("error", Release(claim, now, next_check, reschedule), message)


def check_one(claim: Claim) -> str | Quiet:
    """Ask the gateway for the status of one claimed transaction and act on the answer."""
    try:
        answer = get_gateway().fetch_status(claim.id)
    except Exception as exc:  # GatewayError, or anything the adapter did not expect
        return _error(claim, "status check failed", exc, reschedule=True)
    now = utcnow()
    next_check = now + claims.backoff(claim.attempts)
    if answer is None:
        log.warning("txn=%s poll: gateway answered 404; next check at %s", claim.id, next_check)
        return Quiet("unknown", Release(claim, now, next_check), "poll: the gateway does not know this transaction")
    if answer.status == Status.PENDING:
        log.info("txn=%s poll: gateway says pending; next check at %s", claim.id, next_check)
        return Quiet("pending", Release(claim, now, next_check))
    if _says_again_what_is_flagged(claim.id, answer):
        log.info("txn=%s poll: gateway says %s again (flagged); next check at %s", claim.id, answer.status,
                 next_check)
        return Quiet("flagged", Release(claim, now, next_check))
    try:
        return _apply_answer(claim, answer, Release(claim, now, next_check))
    except Exception as exc:
        db.session.rollback()
        return _error(claim, "applying the gateway's answer failed", exc, reschedule=True)


def _says_again_what_is_flagged(transaction_id: str, answer) -> bool:
    """The gateway says again what is already flagged: a success for other money (not yet
    reviewed), or a refund of a payment whose success it never reported (remembered). Nothing
    new for the timeline, which would otherwise gain a line every check."""
    if answer.status not in (Status.SUCCESS, Status.REFUNDED, Status.PARTIALLY_REFUNDED):
        return False
    tx = db.session.get(Transaction, transaction_id)
    if tx is None:
        repeated = False
    elif answer.status == Status.SUCCESS:
        repeated = (tx.needs_review and MISMATCH in (tx.review_reason or "")
                    and (answer.amount, answer.currency) != (tx.amount, tx.currency))
    else:
        repeated = tx.status == Status.PENDING.value and tx.refund_reported in (answer.status.value,
                                                                                 Status.REFUNDED.value)
    db.session.rollback()  # a read only: the claim is released with the other quiet answers
    return repeated


def _apply_answer(claim: Claim, answer, release: Release) -> str:
    log.info("txn=%s poll: gateway says %s", claim.id, answer.status)
    result = apply_gateway_answer(answer, source=SOURCE, summary=f"poll: gateway says {answer.status.value}",
                                  before_commit=lambda _: claims.release_many([release]))
    if result.flagged == MISMATCH:
        return "flagged"
    return "changed" if result.applied else "unchanged"


def expire_one(claim: Claim) -> str | Quiet:
    """Expire one overdue pending transaction at the gateway, then locally (or make it success).

    A gateway that refuses because the shopper already paid is asked for the payment, and a
    success counts only with the right money (app.services.gateway_reports.close_session).
    """
    overdue = f"pending since {claim.created_at.isoformat(timespec='seconds')}Z"
    log.info("txn=%s expiry: %s", claim.id, overdue)
    try:
        result = close_session(
            claim.id, Status.EXPIRED, source=SOURCE, summary=f"expired ({overdue})",
            before_commit=lambda _: claims.release_many([Release(claim, utcnow(), reschedule=False)]),
        )
    except Exception as exc:  # GatewayError, or anything the adapter did not expect
        db.session.rollback()
        return _error(claim, "expiring the gateway session failed", exc, reschedule=False)
    if result.applied:
        return "paid" if result.decision.target == Status.SUCCESS else "expired"  # closed, as asked if it was
    return "flagged" if result.flagged else "raced"  # raced: a webhook or ops moved it first


def retry_fulfillment(app: Flask, pool: ThreadPoolExecutor, summary: PassSummary, *, batch_size: int) -> None:
    """Hand paid, unfulfilled orders to the fulfillment handler again, each at most once per pass."""
    tried: set[str] = set()
    while True:
        order_ids = [oid for oid in orders_awaiting_fulfillment(limit=batch_size) if oid not in tried]
        db.session.commit()
        if not order_ids:
            return
        tried.update(order_ids)
        for future in [pool.submit(_in_context, app, fulfill_one, oid) for oid in order_ids]:
            summary.count(future.result())


def fulfill_one(order_id: str) -> str:
    """Run the handler for one paid order; "error" when it failed again."""
    log.info("order=%s retrying fulfillment", order_id)
    if fulfill_order(order_id, source=SOURCE):
        return "fulfilled"
    order = db.session.get(Order, order_id)
    failed = order is not None and order.status == OrderStatus.PAID.value and order.fulfillment_claimed_at is None
    db.session.commit()
    return "error" if failed else "not_fulfilled"
