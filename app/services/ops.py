"""What the ops console reads and does: listing with keyset pagination, one transaction's
whole story, the webhook log, and the staff actions re-check, cancel and mark reviewed.

Every action is written on the transaction's timeline with the staff member's email as
actor; status moves go through apply_status with source "ops". Refunds live in
app.services.refunds.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import and_, func, or_, select, update

from app.domain.money import format_minor
from app.domain.status import Outcome, Status
from app.extensions import db
from app.gateways.base import GatewayError
from app.gateways.registry import get_gateway
from app.models import Order, Refund, Transaction, TransactionEvent, WebhookEvent, WebhookRejection
from app.models.clock import utcnow
from app.services import timeline
from app.services.errors import ServiceError
from app.services.payments import get_transaction
from app.services.gateway_reports import MISMATCH, CloseUnanswered, apply_gateway_answer, close_session
from app.services.status_moves import flag_as_read

log = logging.getLogger(__name__)
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
_NEWEST_FIRST = (Transaction.created_at.desc(), Transaction.id.desc())  # the list's order, ties by id


def money_text(amount: int, currency: str) -> str:
    """``1999, "USD"`` as ``19.99 USD`` (integer arithmetic); unknown currencies in minor units."""
    try:
        return format_minor(amount, currency)
    except (TypeError, ValueError):
        return f"{amount} {currency} (minor units)"


def notify_ops(transaction_id: str) -> None:
    """Tell the ops pages a transaction changed even when its status did not (after commit)."""
    from app.realtime import notify_status  # realtime imports services; keep the cycle lazy

    status = db.session.scalar(select(Transaction.status).where(Transaction.id == transaction_id))
    if status is not None:
        notify_status(transaction_id, status)


# -- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListFilters:
    """The list's filters; None means "any". ``created_to`` is inclusive (a whole UTC day)."""

    status: str | None = None
    gateway: str | None = None
    flagged: bool | None = None
    created_from: date | None = None
    created_to: date | None = None
    search: str | None = None


@dataclass(frozen=True)
class Cursor:
    """A position in the list's order (created_at desc, id desc)."""

    created_at: datetime
    transaction_id: str

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat(timespec='microseconds')}|{self.transaction_id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> Cursor | None:
        """The cursor in ``token``, or None when it is absent or not one of ours."""
        if not token or len(token) > 200:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            stamp, transaction_id = raw.split("|", 1)
            if "\x00" in transaction_id:  # PostgreSQL refuses NUL in text: not one of ours
                return None
            return cls(datetime.fromisoformat(stamp), transaction_id)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            return None


@dataclass(frozen=True)
class TransactionPage:
    rows: list[Transaction]
    older: str | None  # cursor of the next page (older rows), None at the end
    newer: str | None  # cursor of the previous page (newer rows), None at the start


def _conditions(filters: ListFilters, *, with_status: bool = True) -> list:
    conds = []
    if with_status and filters.status:
        conds.append(Transaction.status == filters.status)
    if filters.gateway:
        conds.append(Transaction.gateway == filters.gateway)
    if filters.flagged is not None:
        conds.append(Transaction.needs_review == filters.flagged)
    if filters.created_from:
        conds.append(Transaction.created_at >= datetime.combine(filters.created_from, time.min))
    if filters.created_to and filters.created_to < date.max:  # "to the last day there is" filters nothing
        conds.append(Transaction.created_at < datetime.combine(filters.created_to + timedelta(days=1), time.min))
    if filters.search:
        term = filters.search.strip()[:40]
        conds.append(or_(Transaction.id == term, Transaction.order_id == term))
    return conds


def list_transactions(filters: ListFilters, *, after: str | None = None, before: str | None = None,
                      limit: int = PAGE_SIZE) -> TransactionPage:
    """One page, newest first, by keyset on (created_at, id): no OFFSET, so page 10,000 costs
    what page 1 does. ``after`` continues to older rows, ``before`` goes back to newer ones."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    conds = _conditions(filters)
    older_than, newer_than = Cursor.decode(after), Cursor.decode(before)
    at, tid = Transaction.created_at, Transaction.id
    if newer_than is not None and older_than is None:
        c = newer_than
        # created_at >= c repeats the row comparison in a form every index range scan can use.
        conds += [at >= c.created_at, or_(at > c.created_at, and_(at == c.created_at, tid > c.transaction_id))]
        rows = list(db.session.scalars(select(Transaction).where(*conds).order_by(at.asc(), tid.asc())
                                       .limit(limit + 1)))
        has_more_newer = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        return TransactionPage(rows, _cursor_of(rows[-1]) if rows else None,
                               _cursor_of(rows[0]) if rows and has_more_newer else None)
    if older_than is not None:
        c = older_than
        conds += [at <= c.created_at, or_(at < c.created_at, and_(at == c.created_at, tid < c.transaction_id))]
    rows = list(db.session.scalars(select(Transaction).where(*conds).order_by(*_NEWEST_FIRST).limit(limit + 1)))
    has_more_older = len(rows) > limit
    rows = rows[:limit]
    return TransactionPage(rows, _cursor_of(rows[-1]) if rows and has_more_older else None,
                           _cursor_of(rows[0]) if rows and older_than is not None else None)


EXPORT_LIMIT = 50_000
_EXPORT_COLUMNS = (Transaction.id, Transaction.order_id, Transaction.created_at, Transaction.updated_at,
                   Transaction.status, Transaction.amount, Transaction.refunded_amount, Transaction.currency,
                   Transaction.gateway, Transaction.gateway_session_id, Transaction.needs_review,
                   Transaction.review_reason)


def export_rows(filters: ListFilters, *, actor: str, limit: int | None = None) -> list:
    """Every transaction under the filters, newest first, read in one statement (one snapshot).

    At most ``limit``: a larger export is refused rather than cut short, so a file never holds
    part of what its filters asked for without saying so. ``limit`` defaults to EXPORT_LIMIT.
    """
    limit = EXPORT_LIMIT if limit is None else limit
    rows = db.session.execute(select(*_EXPORT_COLUMNS).where(*_conditions(filters)).order_by(*_NEWEST_FIRST)
                              .limit(limit + 1)).all()
    db.session.rollback()  # read only: hand the connection back before the file is written
    if len(rows) > limit:
        raise ServiceError(422, "export_too_large",
                           f"More than {limit:,} transactions match these filters; narrow them (dates, status) "
                           "and export again.")
    log.info("export of %d transactions by %s (%s)", len(rows), actor, filters)
    return rows


def _cursor_of(tx: Transaction) -> str:
    return Cursor(tx.created_at, tx.id).encode()


def status_counts(filters: ListFilters) -> dict[str, int]:
    """How many transactions each status has under the filters other than status."""
    rows = db.session.execute(
        select(Transaction.status, func.count()).where(*_conditions(filters, with_status=False))
        .group_by(Transaction.status)
    ).all()
    found = dict(rows)
    return {s.value: found.get(s.value, 0) for s in Status}


def known_gateways() -> list[str]:
    """Gateway names for the filter: the configured adapter's (the only one there is today)."""
    return [get_gateway().name]


# -- one transaction ------------------------------------------------------------------------


@dataclass
class TransactionDetail:
    transaction: Transaction
    order: Order | None
    events: list[TransactionEvent]
    refunds: list[Refund]
    webhooks: list[WebhookEvent]
    rejections: list[WebhookRejection]
    refunded: int  # refunds the gateway confirmed
    remaining: int  # what may still be refunded (amount minus confirmed and in-flight refunds)
    sending: frozenset[str]  # ids of refunds being sent right now (no Retry is offered for them)


def transaction_detail(transaction_id: str) -> TransactionDetail:
    """Everything known about one transaction, oldest timeline line first; 404 if unknown."""
    tx = get_transaction(transaction_id)
    events = list(db.session.scalars(select(TransactionEvent).where(TransactionEvent.transaction_id == tx.id)
                                      .order_by(TransactionEvent.id)))
    refunds = list(db.session.scalars(select(Refund).where(Refund.transaction_id == tx.id)
                                       .order_by(Refund.created_at, Refund.id)))
    webhooks = list(db.session.scalars(select(WebhookEvent).where(WebhookEvent.transaction_id == tx.id)
                                       .order_by(WebhookEvent.received_at, WebhookEvent.id)))
    # Rejected deliveries carry no verified transaction id: look for it in their bodies, near in time.
    rejections = list(db.session.scalars(
        select(WebhookRejection)
        .where(WebhookRejection.received_at >= tx.created_at - timedelta(days=1),
               WebhookRejection.body_excerpt.contains(tx.id, autoescape=True))
        .order_by(WebhookRejection.received_at.desc()).limit(20)
    ))
    refunded = sum(r.amount for r in refunds if r.status == "succeeded")
    # Only a captured payment can be refunded: a pending or failed one has nothing refundable.
    refundable = tx.status in (Status.SUCCESS.value, Status.PARTIALLY_REFUNDED.value)
    from app.services.refunds import in_flight  # refunds imports this module; keep the cycle lazy

    return TransactionDetail(tx, tx.order, events, refunds, webhooks, rejections, refunded,
                             tx.amount - tx.refunded_amount if refundable else 0,
                             frozenset(r.id for r in refunds if in_flight(r)))


def webhook_log(limit: int = 100) -> tuple[list[WebhookEvent], list[WebhookRejection]]:
    """The most recent verified deliveries and rejected ones, newest first."""
    deliveries = list(db.session.scalars(select(WebhookEvent)
                                         .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
                                         .limit(limit)))
    rejections = list(db.session.scalars(select(WebhookRejection)
                                         .order_by(WebhookRejection.received_at.desc(), WebhookRejection.id.desc())
                                         .limit(limit)))
    return deliveries, rejections


# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionOutcome:
    """What an action did, as a sentence for the staff member who took it."""

    transaction_id: str
    message: str


def _gateway_failed(tx: Transaction, action: str, actor: str, exc: GatewayError) -> ServiceError:
    timeline.record_failure(tx.id, "ops", "ops", f"{action} by {actor} failed: {exc}", actor=actor)
    log.warning("txn=%s ops %s by %s failed at the gateway: %s", tx.id, action, actor, exc)
    if isinstance(exc, CloseUnanswered):
        return ServiceError(502, "gateway_unavailable",
                            f"The gateway did not answer the {action} ({exc}). It may still close the session: "
                            "this page will show what it says. If the payment stays pending, cancel again.")
    return ServiceError(502, "gateway_unavailable",
                        f"The gateway did not complete the {action}: {exc}. Nothing changed; try again shortly.")


def recheck(transaction_id: str, actor: str) -> ActionOutcome:
    """Ask the gateway for the payment's status now and apply it as the webhook would."""
    tx = get_transaction(transaction_id)
    try:
        seen = get_gateway().fetch_status(tx.id)
    except GatewayError as exc:
        raise _gateway_failed(tx, "re-check", actor, exc) from None
    if seen is None:
        timeline.record(tx.id, "ops", "ops", f"re-check by {actor}: the gateway does not know this payment",
                        outcome="noop", actor=actor)
        db.session.commit()
        notify_ops(tx.id)
        return ActionOutcome(tx.id, "The gateway does not know this payment; nothing changed.")
    timeline.record(tx.id, "ops", "ops", f"re-check by {actor}: gateway says {seen.status.value}",
                    outcome="ok", detail={"status": seen.status.value, "amount": seen.amount,
                                          "currency": seen.currency}, actor=actor)
    result = apply_gateway_answer(seen, source="ops", actor=actor,
                                  summary=f"re-check: status {tx.status} -> {seen.status.value}"
                                  if tx.status != seen.status else "")
    if result.flagged == MISMATCH:
        notify_ops(tx.id)
        return ActionOutcome(tx.id, "The gateway reports success for a different amount: flagged, not applied.")
    if not result.applied:
        notify_ops(tx.id)
    log.info("txn=%s re-checked by %s: gateway says %s (%s)", tx.id, actor, seen.status, result.decision.outcome)
    return ActionOutcome(tx.id, _recheck_message(result.decision, seen.status))


def _recheck_message(decision, said: Status) -> str:
    """What a re-check did, in words ops can act on; ``said`` is the gateway's own word."""
    current, recorded = decision.current.value, decision.target.value
    read_as = "" if recorded == said.value else f" (it closed the session on our cancel, so that is {recorded})"
    said = said.value
    if decision.outcome == Outcome.APPLIED:
        return f"The gateway says {said}{read_as}; the payment is now {recorded}."
    if decision.outcome == Outcome.NOOP:
        return f"The gateway says {said}{read_as}, as recorded here; nothing changed."
    return (f"The gateway says {said}{read_as}, but this payment stays {current}: a {current} payment never becomes "
            f"{recorded}. The answer is on the timeline.")


def cancel_payment(transaction_id: str, actor: str) -> ActionOutcome:
    """Cancel a pending payment: expire its gateway session first; if the shopper already paid,
    the payment becomes success instead. 409 when the payment is not pending."""
    tx = get_transaction(transaction_id)
    if tx.status != Status.PENDING.value:
        raise ServiceError(409, "not_pending", f"Only a pending payment can be cancelled; this one is {tx.status}.")
    try:
        result = close_session(tx.id, Status.CANCELLED, source="ops", actor=actor, summary=f"cancel by {actor}")
    except GatewayError as exc:
        raise _gateway_failed(tx, "cancel", actor, exc) from None
    now = db.session.get(Transaction, tx.id, populate_existing=True).status
    if now == Status.SUCCESS.value:
        return ActionOutcome(tx.id, "The shopper had already paid, so the payment is now success, not cancelled.")
    if not result.applied and result.flagged:
        notify_ops(tx.id)
        return ActionOutcome(tx.id, f"The gateway says the shopper paid, but not as recorded: flagged "
                             f"({result.flagged}), nothing applied.")
    if not result.applied:
        notify_ops(tx.id)
        return ActionOutcome(tx.id, f"The payment was no longer pending: it is {now.replace('_', ' ')}, "
                             "so nothing was cancelled.")
    log.info("txn=%s cancelled by %s", tx.id, actor)
    return ActionOutcome(tx.id, "The payment is cancelled.")


def flag_version(tx: Transaction) -> str:
    """When the transaction's review reason was last raised, as the ops page carries it."""
    return tx.flagged_at.isoformat() if tx.flagged_at else ""


def mark_reviewed(transaction_id: str, actor: str, seen_reason: str | None,
                  seen_version: str | None = None) -> ActionOutcome:
    """Clear the needs-review flag, recording who reviewed it.

    ``seen_reason`` and ``seen_version`` (``flag_version``) are the flag the staff member was
    shown: a flag raised since (a refund owed, say, or the same reason raised again after it
    was settled) must be seen before it can be cleared, so anything else is a 409.
    """
    tx = get_transaction(transaction_id)
    reason = tx.review_reason
    if not tx.needs_review:
        raise ServiceError(409, "not_flagged", "This transaction is not flagged for review.")
    if (seen_reason or None) != reason or (seen_version is not None and seen_version != flag_version(tx)):
        raise ServiceError(409, "flag_changed", f"The flag changed since this page was loaded; it is now "
                           f"{reason or 'unspecified'}. Read it before marking it reviewed.")
    now = utcnow()
    cleared = db.session.execute(
        update(Transaction).where(Transaction.id == tx.id, Transaction.needs_review.is_(True),
                                  *flag_as_read(reason, tx.flagged_at))
        .values(needs_review=False, reviewed_at=now, reviewed_by=actor)
        .execution_options(synchronize_session=False)
    ).rowcount
    if cleared != 1:  # flagged again, or reviewed by someone else, between the read and the update
        db.session.rollback()
        raise ServiceError(409, "flag_changed", "The flag changed while you were marking it reviewed. "
                           "Read it again.")
    timeline.record(tx.id, "ops", "ops", f"marked reviewed by {actor} (flag was: {reason or 'unspecified'})",
                    outcome="ok", actor=actor)
    db.session.commit()
    notify_ops(tx.id)
    log.info("txn=%s marked reviewed by %s", tx.id, actor)
    return ActionOutcome(tx.id, "Marked reviewed.")
