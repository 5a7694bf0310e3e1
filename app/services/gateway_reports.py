"""Applying what the gateway says about a payment, for every caller that asks or is told.

The gateway holds the money, so its word moves our status, with one guard: a success whose
amount or currency differs from the transaction is never applied. It is flagged for review
(``amount_mismatch``) and recorded instead, and the order is not fulfilled.

Its deliveries may come out of order. A refund reported before the payment's success is
refused (the transition table), flagged and remembered (``refund_reported``); the success,
when it comes, is followed by that refund before any fulfillment handler runs.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import select, update

from app.domain.status import Decision, Outcome, Status
from app.extensions import db
from app.gateways.base import GatewayError, GatewayNoAnswer, GatewayRejected, GatewayStatus
from app.gateways.registry import get_gateway
from app.models import Transaction
from app.services import timeline
from app.services.errors import transaction_not_found
from app.services.payments import get_transaction
from app.services.status_moves import MoveResult, TxState, apply_status, flag_for_review, read_state

log = logging.getLogger(__name__)
MISMATCH = "amount_mismatch"
REFUND_BEFORE_SUCCESS = "refund_reported_before_success"
INCONSISTENT = "gateway_inconsistent"
FINAL_WITHOUT_MONEY = (Status.FAILURE, Status.EXPIRED, Status.CANCELLED)


def apply_report(
    transaction_id: str,
    status: Status,
    amount: int | None,
    currency: str | None,
    *,
    source: str,
    summary: str = "",
    detail: dict | None = None,
    actor: str | None = None,
    before_commit: Callable[[Decision], None] | None = None,
    known: TxState | None = None,
) -> MoveResult:
    """Apply the gateway's status for the payment; a success with other money is flagged, not applied.

    ``known`` is the transaction's state if the caller has just read it.
    """
    refund_report = status in (Status.REFUNDED, Status.PARTIALLY_REFUNDED)
    # A refund report locks the row until its commit: a success racing it then either moved
    # first (and the refund applies after it) or sees the refund remembered (and waits for it).
    tx = read_state(transaction_id, lock=True) if refund_report else known or read_state(transaction_id)
    if tx is None:
        raise transaction_not_found()
    if _closed_as_asked(status, tx.closing_as, tx.status) != status:
        status = tx.closing_as
        summary = f"{summary or 'gateway says expired'}: the session was closed on request, so {status.value}"
    if status == Status.SUCCESS and (amount, currency) != (tx.amount, tx.currency):
        log.warning("txn=%s gateway success amount mismatch (source=%s), flagged", tx.id, source)
        return _flag_and_refuse(
            Decision(tx.status, status, Outcome.REFUSED, flag_reason=MISMATCH), MISMATCH,
            f"gateway success for {amount} {currency} does not match {tx.amount} {tx.currency}: not applied",
            tx_id=tx.id, source=source, actor=actor, detail=detail, before_commit=before_commit)
    if refund_report:
        before_commit = _books_follow_refund(tx.id, status, source, actor, before_commit)
    result = apply_status(tx.id, status, source=source, summary=summary, detail=detail, actor=actor,
                          before_commit=before_commit, known=tx)
    if result.refund_first is not None:
        _refund_then_fulfil(tx.order_id, result, source=source, actor=actor)
    return result


def _refund_then_fulfil(order_id: str, result: MoveResult, *, source: str, actor: str | None) -> None:
    """After the success of a payment the gateway had already reported refunded (its deliveries
    came out of order): the refund follows the success before any handler runs, and the order
    is fulfilled only if the payment is not refunded in full."""
    from app.services import fulfillment  # fulfillment is reached through status_moves too; keep it lazy

    if result.order_paid:
        fulfillment.release_claim(order_id, result.claimed_at)  # committed with the refund's move
    follow_remembered_refund(result.transaction_id, source=source, actor=actor)
    if result.order_paid:
        fulfillment.fulfill_order(order_id, source=source)  # skips an order refunded in full


def follow_remembered_refund(transaction_id: str, *, source: str, actor: str | None = None) -> bool:
    """Apply the refund the gateway reported before this payment's success, now that the
    success is in, and forget it (one commit); False when there is none to apply."""
    tx = read_state(transaction_id, lock=True)
    if tx is None or tx.refund_reported is None:
        return False

    def forget(_decision: Decision | None = None) -> None:
        db.session.execute(update(Transaction).where(Transaction.id == transaction_id)
                           .values(refund_reported=None).execution_options(synchronize_session=False))

    if tx.status == Status.REFUNDED:  # refunded in full meanwhile (a later report, or ops): nothing left to apply
        forget()
        db.session.commit()
        return False
    if tx.status not in (Status.SUCCESS, Status.PARTIALLY_REFUNDED):
        return False
    refund = tx.refund_reported

    apply_status(tx.id, refund, source=source, actor=actor, known=tx,
                 summary=f"the {refund.value} the gateway reported before the success, applied after it",
                 before_commit=_books_follow_refund(tx.id, refund, source, actor, forget))
    return True


def follow_remembered_refunds(*, source: str, limit: int = 100) -> int:
    """``follow_remembered_refund`` for every payment whose success came in and whose remembered
    refund was not applied after it (its process stopped in between), and forget those refunded
    in full since by other means: reconciliation's safety net."""
    waiting = db.session.scalars(select(Transaction.id).where(
        Transaction.refund_reported.is_not(None),
        Transaction.status.in_((Status.SUCCESS.value, Status.PARTIALLY_REFUNDED.value, Status.REFUNDED.value)),
    ).order_by(Transaction.updated_at).limit(limit)).all()
    db.session.commit()
    followed = 0
    for transaction_id in waiting:
        try:
            followed += follow_remembered_refund(transaction_id, source=source)
        except Exception:  # one payment's fault must not hold up the others
            db.session.rollback()
            log.exception("txn=%s following the refund reported before its success failed", transaction_id)
    return followed


def _closed_as_asked(expiry: Status, closing_as: Status | None, current: Status) -> Status:
    """What an expiry of the payment's session is: the close we asked the gateway for (an ops
    cancel whose answer never came) when there was one, else the expiry itself."""
    if expiry == Status.EXPIRED and closing_as not in (None, Status.EXPIRED) and current != Status.EXPIRED:
        return closing_as
    return expiry


def _books_follow_refund(transaction_id: str, status: Status, source: str, actor: str | None,
                         before_commit: Callable[[Decision], None] | None) -> Callable[[Decision], None]:
    """``before_commit`` for a refund status the gateway reports: when the move applies, the
    refund books follow it (``refunds.follow_gateway_refund``)."""
    def follow(decision: Decision) -> None:
        if decision.outcome == Outcome.APPLIED:
            from app.services.refunds import follow_gateway_refund  # refunds imports ops, which imports this

            follow_gateway_refund(transaction_id, status, source, actor)
        elif decision.outcome == Outcome.REFUSED and decision.current in (Status.PENDING, *FINAL_WITHOUT_MONEY):
            _remember_early_refund(transaction_id, status, source, actor)
        if before_commit:
            before_commit(decision)

    return follow


def _remember_early_refund(transaction_id: str, status: Status, source: str, actor: str | None) -> None:
    """A refund reported for a payment whose success was not: the gateway took the money and gave
    it back, and the success is still on its way. Remembered (``refunded`` is kept over a partial)
    so that the success, when it comes, is followed by it; flagged, since it may never come.
    Said once, however often it is reported. In the caller's database transaction."""
    news = (Transaction.refund_reported.is_distinct_from(Status.REFUNDED.value) if status == Status.REFUNDED
            else Transaction.refund_reported.is_(None))
    if not db.session.execute(
        update(Transaction).where(Transaction.id == transaction_id, news).values(refund_reported=status.value)
        .execution_options(synchronize_session=False)
    ).rowcount:
        return
    flag_for_review(transaction_id, REFUND_BEFORE_SUCCESS)
    timeline.record(transaction_id, "flag", source, f"the gateway reports the payment {status.value} before "
                    "reporting its success: flagged, and the refund will follow the success when it comes",
                    outcome="flagged", actor=actor)


def apply_gateway_answer(answer: GatewayStatus, *, source: str, summary: str, actor: str | None = None,
                         before_commit: Callable[[Decision], None] | None = None) -> MoveResult:
    """``apply_report`` for an answer to ``fetch_status``, with the answer kept on the timeline."""
    return apply_report(answer.transaction_id, answer.status, answer.amount, answer.currency, source=source,
                        summary=summary, actor=actor, before_commit=before_commit,
                        detail={"status": answer.status.value, "amount": answer.amount, "currency": answer.currency})


def _flag_and_refuse(decision: Decision, reason: str, line: str, *, tx_id: str, source: str, actor: str | None,
                     detail: dict | None = None, before_commit: Callable[[Decision], None] | None = None
                     ) -> MoveResult:
    """Flag the payment for review with ``reason`` and record ``line``, moving nothing; commits."""
    flag_for_review(tx_id, reason)
    timeline.record(tx_id, "flag", source, line, outcome="flagged", detail=detail, actor=actor)
    if before_commit:
        before_commit(decision)
    db.session.commit()
    return MoveResult(tx_id, decision, flagged=reason)


class CloseUnanswered(GatewayError):
    """The gateway did not answer the request to expire the session: it may have closed it."""


def _remember_closing(transaction_id: str, closing_as: Status | None) -> None:
    """Record (and commit) what a pending payment's session is being closed as, or forget it."""
    db.session.execute(
        update(Transaction)
        .where(Transaction.id == transaction_id, Transaction.status == Status.PENDING.value)
        .values(closing_as=closing_as.value if closing_as else None)
    )
    db.session.commit()


def close_session(
    transaction_id: str,
    closed_as: Status,
    *,
    source: str,
    summary: str,
    actor: str | None = None,
    before_commit: Callable[[Decision], None] | None = None,
) -> MoveResult:
    """Expire the payment's gateway session and move the payment to ``closed_as``.

    When the gateway answers that the shopper already paid (409), it is asked for the
    payment and that is applied through ``apply_report``, so a success counts only with the
    right money. When it has no such session (404) it is asked too: a final status is
    applied, and a payment it does not know either is closed, since no money can have moved.
    Raises GatewayError, changing nothing, when the gateway cannot be reached.
    """
    tx = get_transaction(transaction_id)
    if tx.gateway_session_id is None:
        return apply_status(tx.id, closed_as, source=source, actor=actor, before_commit=before_commit,
                            summary=f"{summary} (no gateway session was opened)")
    if closed_as == Status.EXPIRED:
        asked = _closed_as_asked(closed_as, Status(tx.closing_as) if tx.closing_as else None, Status(tx.status))
        if asked != closed_as:  # an earlier close got no answer: closing the session now is that close
            summary = f"{summary}: the session had been asked to close as {asked.value} earlier, so {asked.value}"
        return _close(tx, asked, source=source, summary=summary, actor=actor, before_commit=before_commit)
    _remember_closing(tx.id, closed_as)  # committed before the call: its expiry webhook may come first
    try:
        result = _close(tx, closed_as, source=source, summary=summary, actor=actor, before_commit=before_commit)
    except CloseUnanswered:
        raise  # the close may have happened: the expiry the gateway reports for it is still this close
    except GatewayError:
        _remember_closing(tx.id, None)  # the close failed, and the caller says so: a later expiry is one
        raise
    if result.flagged and not result.applied:
        _remember_closing(tx.id, None)  # left as it was, for ops: a later expiry is not this close
    return result


def _close(tx, closed_as: Status, *, source: str, summary: str, actor: str | None,
           before_commit: Callable[[Decision], None] | None) -> MoveResult:
    """``close_session``'s conversation with the gateway; raises GatewayError as it does."""
    gateway = get_gateway()
    try:
        closed = gateway.expire_session(tx.gateway_session_id)
    except GatewayRejected as exc:
        if exc.status_code != 404:
            raise
        closed = None  # the gateway has no such session: what does it know of the payment?
    except GatewayNoAnswer as exc:
        raise CloseUnanswered(str(exc)) from exc
    if closed == Status.EXPIRED:
        return apply_status(tx.id, closed_as, source=source, actor=actor, before_commit=before_commit,
                            summary=f"{summary}: gateway session expired")
    report = gateway.fetch_status(tx.id)
    why = "session unknown (404)" if closed is None else "refused by the gateway (409)"
    if closed is None and report is None:
        # Unknown to the gateway by session and by payment: it cannot have taken any money, and
        # asking again would only fail the same way every pass. A success it reports later is
        # still applied (and flagged) by the transition table.
        return apply_status(tx.id, closed_as, source=source, actor=actor, before_commit=before_commit,
                            summary=f"{summary}: the gateway knows neither the session nor the payment (404)")
    if closed is None and report.status in FINAL_WITHOUT_MONEY:
        return apply_gateway_answer(report, source=source, actor=actor, before_commit=before_commit,
                                    summary=f"{summary}: {why}, gateway says {report.status.value}")
    if report is None or report.status != Status.SUCCESS:
        said = "nothing" if report is None else report.status.value
        answered = "has no such session" if closed is None else "refused to expire the session as paid"
        return _flag_and_refuse(
            Decision(Status(tx.status), closed_as, Outcome.REFUSED), INCONSISTENT,
            f"{summary}: the gateway {answered}, but its status says {said}; left as it is",
            tx_id=tx.id, source=source, actor=actor, before_commit=before_commit)
    return apply_gateway_answer(report, source=source, actor=actor, before_commit=before_commit,
                                summary=f"{summary}: {why}, the shopper already paid")
