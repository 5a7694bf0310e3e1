"""Refunds through the gateway, never more than was captured, even when submitted at once.

The amount is reserved first with a conditional UPDATE on transactions.refunded_amount
(``refunded_amount + x <= amount``), committed with a ``requested`` Refund row, and only
then sent to the gateway under the refund's id as Idempotency-Key. A definite refusal
releases the reservation; an unanswered call keeps it (the money may have moved) and flags
the transaction, and the refund can be retried under the same key. Every refund row leaves
``requested`` once, by compare-and-set, so a reservation is released at most once. A refund
whose request never came back at all (the process stopped mid-call) is found by
reconciliation and flagged the same way (``flag_unanswered_refunds``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.domain.status import Status
from app.extensions import db
from app.gateways.base import GatewayError, GatewayNoAnswer, GatewayRejected
from app.gateways.registry import get_gateway
from app.models import Refund, Transaction
from app.models.clock import find_by_id, utcnow
from app.services import timeline
from app.services.errors import ServiceError
from app.services.ops import money_text, notify_ops
from app.services.payments import get_transaction
from app.services.status_moves import apply_status, flag_as_read, flag_for_review
from app.services.waiting import wait_for

log = logging.getLogger(__name__)
REFUNDABLE = (Status.SUCCESS.value, Status.PARTIALLY_REFUNDED.value)
OUTCOME_UNKNOWN = "refund_outcome_unknown"  # the review reason of a refund the gateway did not answer
REFUNDED_ELSEWHERE = "partial_refund_made_at_gateway"
MADE_AFTER_ALL = "refund_recorded_failed_but_made"  # a refund recorded failed that the gateway then confirmed


def refund(transaction_id: str, amount: int, actor: str, request_key: str | None = None) -> Refund:
    """Refund ``amount`` minor units of a captured payment and move its status.

    ``request_key`` is the one-time key of the form that asked: a form sent again (a double
    click, a reload of the answer) gets the refund it already made, never a second one.
    422 ``invalid_amount`` unless a whole number above 0; 409 ``not_refundable`` unless the
    payment is success or partially_refunded; 422 ``refund_exceeds_remaining`` beyond what
    remains; 502 when the gateway refuses or does not answer; 409 ``refund_already_requested``
    for a form sent again whose refund has not succeeded.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ServiceError(422, "invalid_amount", "The refund amount must be a whole number of minor units above 0.")
    tx = get_transaction(transaction_id)
    if request_key:
        earlier = _made_by_form(tx.id, request_key, amount)
        if earlier is not None:
            return earlier
    # Neither the amount nor any sum may leave the 32-bit integer column's range: more than the
    # payment is refused here, and the reservation compares "refunded <= amount - x".
    reserved = 0 if amount > tx.amount else db.session.execute(
        update(Transaction)
        .where(Transaction.id == tx.id, Transaction.status.in_(REFUNDABLE),
               Transaction.refunded_amount <= Transaction.amount - amount)
        .values(refunded_amount=Transaction.refunded_amount + amount)
        .execution_options(synchronize_session=False)
    ).rowcount
    if reserved != 1:
        db.session.rollback()
        earlier = _made_by_form(tx.id, request_key, amount) if request_key else None
        if earlier is not None:  # the same form's other copy took the amount meanwhile
            return earlier
        tx = db.session.get(Transaction, tx.id, populate_existing=True)
        if tx.status not in REFUNDABLE:
            raise ServiceError(409, "not_refundable",
                               f"Only a successful payment can be refunded; this one is {tx.status}.")
        left = tx.amount - tx.refunded_amount
        if 0 < amount <= left:  # refused a moment ago; it would fit now (the payment changed meanwhile)
            raise ServiceError(409, "payment_changed", "The payment changed while this refund was being made, and "
                               "nothing was refunded. Check the payment and refund again.")
        message = (f"At most {left} minor units ({money_text(left, tx.currency)}) remain to be refunded." if left
                   else "Nothing remains to be refunded: the whole payment is refunded or held by refunds in progress.")
        raise ServiceError(422, "refund_exceeds_remaining", message, {"remaining": left})
    record = Refund(transaction_id=tx.id, amount=amount, currency=tx.currency, status="requested", actor=actor,
                    request_key=request_key or None)
    db.session.add(record)
    try:
        db.session.flush()
    except IntegrityError:  # the same form, sent twice at once: the other copy made the refund
        db.session.rollback()  # and with it this copy's reservation
        return _made_by_form(tx.id, request_key, amount)
    timeline.record(tx.id, "ops", "ops", f"refund of {money_text(amount, tx.currency)} requested by {actor}",
                    outcome="requested", detail={"refund_id": record.id, "amount": amount}, actor=actor)
    db.session.commit()  # the reservation holds before the gateway is asked
    log.info("txn=%s refund %s of %s requested by %s", tx.id, record.id, amount, actor)
    return _send(record.id, actor)


def _made_by_form(transaction_id: str, request_key: str, amount: int) -> Refund | None:
    """The refund a form with ``request_key`` already made, if any: returned when it succeeded;
    otherwise 409, saying where it stands, since sending it again would be a second refund."""
    def read():
        return db.session.scalar(select(Refund).where(Refund.request_key == request_key)
                                 .execution_options(populate_existing=True))

    earlier = read()
    if earlier is None:
        return None
    if earlier.transaction_id != transaction_id or earlier.amount != amount:
        raise ServiceError(409, "refund_form_reused", "This form was already used for another refund; "
                           "reload the page to refund again.")
    if in_flight(earlier):  # a double click: the first copy's answer is this one's too
        longest = current_app.config["GATEWAY_TOTAL_BUDGET"] + 5
        earlier = wait_for(read, lambda refund: not in_flight(refund), longest)
    if earlier.status == "succeeded":
        return earlier
    where = ("is waiting for the gateway's answer: retry it from the list of refunds below if it stays so"
             if earlier.status == "requested" else "failed, and nothing was refunded")
    raise ServiceError(409, "refund_already_requested", f"This form already asked for refund {earlier.id}, which "
                       f"{where}. To refund again, enter the amount anew.")


def in_flight(record: Refund) -> bool:
    """Being sent to the gateway right now: sent within its time budget (and the commit before
    the send) and not answered yet. Retry is refused meanwhile."""
    sent = record.retried_at or record.created_at
    budget = current_app.config["GATEWAY_TOTAL_BUDGET"]
    return (record.status == "requested" and record.flagged_at is None
            and sent > utcnow() - timedelta(seconds=budget + 5))


def _same_send(record):
    """The refund row is still at the send ``record`` was read at (no Retry since)."""
    return Refund.retried_at.is_(None) if record.retried_at is None else Refund.retried_at == record.retried_at


def _count_refunded(transaction_id: str, delta: int) -> None:
    """Add ``delta`` (negative to give back) to the payment's refunded amount, in the caller's
    database transaction. A payment the gateway reports wholly refunded (a refund made at the
    gateway while one from here was in flight) keeps its whole amount counted."""
    db.session.execute(
        update(Transaction).where(Transaction.id == transaction_id)
        .values(refunded_amount=case((Transaction.status == Status.REFUNDED.value, Transaction.amount),
                                     else_=Transaction.refunded_amount + delta))
        .execution_options(synchronize_session=False)
    )


def retry_refund(transaction_id: str, refund_id: str, actor: str) -> Refund:
    """Send a refund the gateway did not answer again, under the same Idempotency-Key.

    404 unless the refund belongs to the transaction; 409 once it succeeded or failed.
    """
    record = find_by_id(Refund, refund_id)
    if record is None or record.transaction_id != transaction_id:
        raise ServiceError(404, "refund_not_found", "No refund has that id.")
    if record.status != "requested":
        raise ServiceError(409, "refund_settled", f"This refund is already {record.status}.")
    # One send at a time: two sends of one refund could answer each other ("in progress",
    # "nothing left") and a refusal must never release a refund the other send made.
    claimed = not in_flight(record) and db.session.execute(
        update(Refund).where(Refund.id == record.id, Refund.status == "requested", _same_send(record))
        .values(retried_at=utcnow(), flagged_at=None)  # in flight again, for another gateway budget
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if not claimed:
        db.session.rollback()
        raise ServiceError(409, "refund_in_flight", "This refund is being sent to the gateway right now; "
                           "its answer will show on this page.")
    timeline.record(record.transaction_id, "ops", "ops", f"refund {record.id} retried by {actor}",
                    outcome="requested", detail={"refund_id": record.id, "amount": record.amount}, actor=actor)
    db.session.commit()
    return _send(record.id, actor)


def _send(refund_id: str, actor: str) -> Refund:
    record = db.session.get(Refund, refund_id)
    tx_id, amount, currency = record.transaction_id, record.amount, record.currency
    try:
        result = get_gateway().refund(tx_id, amount, idempotency_key=record.id)
    except GatewayError as exc:
        if isinstance(exc, GatewayRejected) and not _still_working(exc):
            raise _refused(record, actor, f"the gateway refused it: {exc}",
                           f"The gateway refused the refund ({exc.status_code}); nothing was refunded.") from None
        # No answer, "still working on it", or an answer that is no refusal (a 5xx, a redirect).
        if isinstance(exc, GatewayNoAnswer):
            raise _held(record, actor, f"the gateway did not answer ({exc})", "The gateway did not answer. "
                        "The amount stays reserved; retry the refund from this page.") from None
        raise _held(record, actor, f"the gateway did not give its outcome ({exc})", "The gateway did not say what "
                    "became of the refund. The amount stays reserved; retry the refund from this page.") from None
    if result.failed:
        raise _refused(record, actor, f"the gateway says it {result.status} (refund {result.refund_id})",
                       f"The gateway says the refund {result.status}; nothing was refunded.")
    if not result.succeeded:  # pending, or a word the contract does not name: the money may yet move
        said = f"says it is {result.status}" if result.status else "gave no status"
        raise _held(record, actor, f"the gateway {said} (refund {result.refund_id}), not succeeded",
                    f"The gateway has not confirmed the refund (it {said}). The amount stays reserved; retry "
                    "the refund from this page to ask again.")
    if _leave_requested(record.id, "succeeded", gateway_refund_id=result.refund_id):
        timeline.record(tx_id, "ops", "ops", f"refund of {money_text(amount, currency)} succeeded "
                        f"(gateway refund {result.refund_id})", outcome="ok",
                        detail={"refund_id": record.id, "gateway_refund_id": result.refund_id}, actor=actor)
        _outcome_known(tx_id, actor)
    else:
        _correct_released(record.id, result.refund_id, actor)
    db.session.commit()
    log.info("txn=%s refund %s succeeded at the gateway as %s", tx_id, record.id, result.refund_id)
    _settle_status(tx_id, actor)
    return db.session.get(Refund, record.id, populate_existing=True)


def _refused(record: Refund, actor: str, why: str, message: str) -> ServiceError:
    """The gateway says no money moved: give the amount back; returns the error to raise."""
    _release(record, actor, why)
    return ServiceError(502, "refund_refused", message)


def _held(record: Refund, actor: str, why: str, message: str) -> ServiceError:
    """The money may have moved: keep the amount held and flag the payment; returns the error to raise."""
    db.session.rollback()
    _flag_unanswered(record, why, actor)
    return ServiceError(502, "gateway_unavailable", message)


def _leave_requested(refund_id: str, status: str, **values) -> bool:
    """Move a refund out of ``requested`` (compare-and-set, in the caller's database
    transaction); True for the one caller that did. Only that caller may release or count it."""
    return _move_refund(refund_id, "requested", status, **values)


def _move_refund(refund_id: str, from_status: str, to_status: str, **values) -> bool:
    """A refund's status move as a compare-and-set, in the caller's database transaction."""
    return db.session.execute(
        update(Refund).where(Refund.id == refund_id, Refund.status == from_status).values(status=to_status, **values)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


# Refusals that say the gateway is still busy with this Idempotency-Key, not that it will not refund.
STILL_WORKING = frozenset({"idempotency_key_in_use", "idempotency_request_in_progress", "request_in_progress"})


def _still_working(exc: GatewayRejected) -> bool:
    """A 409 naming a request in progress, or naming nothing: the refund may yet be made, so it is
    held. Any other refusal (409 not_refundable included) is final."""
    return exc.status_code == 409 and (exc.code is None or exc.code in STILL_WORKING)


def _outcome_known(transaction_id: str, actor: str | None) -> None:
    """Once none of the payment's refunds is left unanswered, the refund_outcome_unknown reason
    is settled: it leaves the open reasons, and the flag is cleared when it was the only one.
    A compare-and-set on the reasons, so a reason raised meanwhile stays. In the caller's
    database transaction."""
    unanswered = db.session.scalar(select(func.count()).select_from(Refund).where(
        Refund.transaction_id == transaction_id, Refund.status == "requested", Refund.flagged_at.is_not(None)))
    flag = db.session.execute(select(Transaction.needs_review, Transaction.review_reason, Transaction.flagged_at)
                              .where(Transaction.id == transaction_id)).one()
    reasons = [r.strip() for r in (flag.review_reason or "").split(",") if r.strip()]
    if unanswered or not flag.needs_review or OUTCOME_UNKNOWN not in reasons:
        return
    rest = ", ".join(r for r in reasons if r != OUTCOME_UNKNOWN)
    settled = {"review_reason": rest} if rest else {"needs_review": False, "reviewed_at": utcnow(),
                                                     "reviewed_by": "system"}
    done = db.session.execute(
        update(Transaction).where(Transaction.id == transaction_id, Transaction.needs_review.is_(True),
                                  *flag_as_read(flag.review_reason, flag.flagged_at)).values(**settled)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done:
        timeline.record(transaction_id, "flag", "ops", "every refund's outcome is known now: "
                        + (f"{OUTCOME_UNKNOWN} settled, still flagged for {rest}" if rest
                           else "the review flag is cleared"), outcome="ok", actor=actor)


def _correct_released(refund_id: str, gateway_refund_id: str, actor: str) -> None:
    """The gateway confirms a refund this app had already recorded as failed (and released):
    the money moved, so the books follow it, the amount is counted again and ops are told."""
    corrected = _leave_failed(refund_id, gateway_refund_id)
    if corrected is None:
        return  # already recorded as succeeded: the same answer, twice
    _count_refunded(corrected.transaction_id, corrected.amount)
    flag_for_review(corrected.transaction_id, MADE_AFTER_ALL)
    timeline.record(corrected.transaction_id, "ops", "ops",
                    f"refund {refund_id} of {money_text(corrected.amount, corrected.currency)} was recorded as "
                    f"failed, but the gateway confirms it (gateway refund {gateway_refund_id}): counted as made",
                    outcome="flagged", detail={"refund_id": refund_id, "gateway_refund_id": gateway_refund_id},
                    actor=actor)
    log.warning("txn=%s refund %s recorded failed but confirmed by the gateway: corrected",
                corrected.transaction_id, refund_id)


def _leave_failed(refund_id: str, gateway_refund_id: str) -> Refund | None:
    """Move a ``failed`` refund to ``succeeded``; the refund when this caller did."""
    moved = _move_refund(refund_id, "failed", "succeeded", gateway_refund_id=gateway_refund_id)
    return db.session.get(Refund, refund_id, populate_existing=True) if moved else None


def _flag_unanswered(record, why: str, actor: str | None, *, swept: bool = False) -> bool:
    """Flag the refund's payment for ops while the refund is still ``requested``: the money
    may have moved, so the amount stays held. A ``swept`` record (a row the sweep listed) must
    also be unflagged and not retried since it was listed. Commits; True when it flagged."""
    tx_id = record.transaction_id
    conditions = [Refund.id == record.id, Refund.status == "requested"]
    if swept:
        conditions += [Refund.flagged_at.is_(None), _same_send(record)]
    flagged = db.session.execute(update(Refund).where(*conditions).values(flagged_at=utcnow())
                                 .execution_options(synchronize_session=False)).rowcount
    if flagged != 1:  # settled (or retried) meanwhile: nothing to flag
        db.session.rollback()
        return False
    flag_for_review(tx_id, OUTCOME_UNKNOWN)
    money = money_text(record.amount, record.currency)
    timeline.record(tx_id, "ops", "poller" if swept else "ops", f"refund {record.id} of {money}: {why}; amount held, "
                    "retry it", outcome="error", actor=actor)
    db.session.commit()
    notify_ops(tx_id)
    log.warning("txn=%s refund %s unanswered: %s", tx_id, record.id, why)
    return True


def flag_unanswered_refunds(older_than: timedelta, limit: int = 100) -> int:
    """Flag refunds still ``requested`` after ``older_than`` that nobody flagged: their request
    never came back (the process making it stopped). Each is flagged once; returns how many."""
    cutoff = utcnow() - older_than
    stale = db.session.execute(select(  # plain rows: what was listed, not reloaded after a commit
        Refund.id, Refund.transaction_id, Refund.amount, Refund.currency, Refund.created_at, Refund.retried_at,
    ).where(Refund.status == "requested", Refund.flagged_at.is_(None),
            func.coalesce(Refund.retried_at, Refund.created_at) < cutoff).limit(limit)).all()
    db.session.commit()
    flagged = 0
    for record in stale:
        sent = record.retried_at or record.created_at
        # A compare-and-set: a refund settled, flagged or retried since it was listed is left alone.
        flagged += _flag_unanswered(record, f"no answer was recorded since {sent.isoformat(timespec='seconds')}Z "
                                    "(the request was cut off)", None, swept=True)
    return flagged


def follow_gateway_refund(transaction_id: str, status: Status, source: str, actor: str | None) -> None:
    """The books after the gateway reported a refund status that was applied (a refund made at
    the gateway, not here): ``refunded`` counts the whole amount as refunded; a partial refund
    of which nothing is counted here is flagged. In the caller's database transaction."""
    if status != Status.REFUNDED:
        flag_uncounted_partial_refund(transaction_id, source, actor)
        return
    counted = db.session.execute(
        update(Transaction).where(Transaction.id == transaction_id, Transaction.refunded_amount < Transaction.amount)
        .values(refunded_amount=Transaction.amount).execution_options(synchronize_session=False)).rowcount
    if counted:
        timeline.record(transaction_id, "status", source, "the gateway reports the whole payment refunded: "
                        "counted as refunded, including what was refunded at the gateway", outcome="ok", actor=actor)


def flag_uncounted_partial_refund(transaction_id: str, source: str, actor: str | None) -> None:
    """Flag a payment the gateway reports partly refunded of which nothing is counted here (a
    refund made in the gateway's dashboard): its amount is unknown, so what the ops page offers
    to refund would be too much. In the caller's database transaction."""
    row = db.session.execute(select(Transaction.status, Transaction.refunded_amount)
                             .where(Transaction.id == transaction_id)).one()
    if row.status == Status.PARTIALLY_REFUNDED.value and not row.refunded_amount:
        flag_for_review(transaction_id, REFUNDED_ELSEWHERE)
        timeline.record(transaction_id, "flag", source, "the gateway reports a partial refund that was not made "
                        "here: its amount is unknown, so less may remain to refund than shown",
                        outcome="flagged", actor=actor)


def _release(record: Refund, actor: str, why: str) -> None:
    """Mark the refund failed and give its amount back, once, whoever gets here first."""
    db.session.rollback()
    if _leave_requested(record.id, "failed"):
        _count_refunded(record.transaction_id, -record.amount)
        # a partial refund the gateway reported while this one was held is now uncounted
        flag_uncounted_partial_refund(record.transaction_id, "ops", actor)
        timeline.record(record.transaction_id, "ops", "ops",
                        f"refund of {money_text(record.amount, record.currency)} failed: {why}"[:500],
                        outcome="error", detail={"refund_id": record.id}, actor=actor)
        _outcome_known(record.transaction_id, actor)
    db.session.commit()
    notify_ops(record.transaction_id)
    log.warning("txn=%s refund %s failed: %s", record.transaction_id, record.id, why)


# How far back the sweep below looks for confirmed refunds: a pass runs every minute, so a week
# covers any stop of the scheduler a shop would not have noticed.
SETTLE_LOOKBACK = timedelta(days=7)


def _confirmed(transaction_id):
    """What the gateway confirmed of a payment's refunds from here (a value or a column)."""
    return select(func.coalesce(func.sum(Refund.amount), 0)).where(
        Refund.transaction_id == transaction_id, Refund.status == "succeeded")


def settle_refund_statuses(source: str, limit: int = 100) -> int:
    """Move payments to the status their confirmed refunds add up to, where a refund's success
    was recorded but the payment was not moved after it (the process stopped between the two
    commits, or the move's write failed). Returns how many were looked at."""
    confirmed = _confirmed(Transaction.id).scalar_subquery()
    recently_refunded = select(Refund.transaction_id).where(
        Refund.status == "succeeded", Refund.created_at >= utcnow() - SETTLE_LOOKBACK)
    unsettled = list(db.session.scalars(select(Transaction.id).where(
        Transaction.id.in_(recently_refunded),
        or_(Transaction.status == Status.SUCCESS.value,
            and_(Transaction.status == Status.PARTIALLY_REFUNDED.value, confirmed >= Transaction.amount)),
    ).limit(limit)))
    db.session.commit()
    for transaction_id in unsettled:
        log.warning("txn=%s confirmed refunds not yet reflected in its status: settling", transaction_id)
        _settle_status(transaction_id, None, source=source)
    return len(unsettled)


def _settle_status(transaction_id: str, actor: str | None, *, source: str = "ops") -> None:
    """Move the payment to refunded or partially_refunded by what the gateway confirmed."""
    tx = db.session.get(Transaction, transaction_id, populate_existing=True)
    confirmed = db.session.scalar(_confirmed(transaction_id))
    target = Status.REFUNDED if confirmed >= tx.amount else Status.PARTIALLY_REFUNDED
    if tx.status == target.value or (tx.status == Status.REFUNDED.value):
        db.session.rollback()
        notify_ops(transaction_id)  # the status stays; the refunds and timeline changed
        return
    apply_status(transaction_id, target, source=source, actor=actor,
                 summary=f"refunds confirmed: {money_text(confirmed, tx.currency)} of "
                         f"{money_text(tx.amount, tx.currency)}")
