"""Receiving the gateway's webhooks: verify, deduplicate, check the money, move the status."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from typing import Callable

from sqlalchemy.exc import IntegrityError

from app.domain.status import Outcome, Status
from app.extensions import db
from app.gateways.base import VerifiedEvent, WebhookRejected
from app.gateways.registry import get_gateway
from app.metrics import WEBHOOKS
from app.models import WebhookEvent, WebhookRejection
from app.models.clock import utcnow
from app.services import timeline
from app.services.gateway_reports import MISMATCH, apply_report
from app.services.status_moves import apply_reported_success, read_state

log = logging.getLogger(__name__)
STATUS_EVENT = "payment.status_changed"
DEDUP_KEY = "uq_webhook_events_gateway_webhook_id"
_INSERT_EVENT = WebhookEvent.__table__.insert()


@dataclass(frozen=True)
class WebhookOutcome:
    """How a delivery was handled; ``accepted`` False means answer 400."""

    accepted: bool
    outcome: str
    message: str


def _reject(exc: WebhookRejected, body: bytes, remote_addr: str | None) -> WebhookOutcome:
    db.session.add(WebhookRejection(
        gateway=get_gateway().name, webhook_id=(exc.webhook_id or "")[:255] or None, reason=exc.reason,
        # the proxy's X-Forwarded-For entry, which a client may have written: kept to the column's width
        remote_addr=(remote_addr or "")[:64] or None,
        body_excerpt=body[:500].decode("utf-8", "replace").replace("\x00", ""),
    ))
    db.session.commit()
    log.warning("webhook rejected: %s (webhook-id=%s)", exc.reason, exc.webhook_id)
    WEBHOOKS.labels("rejected").inc()
    return WebhookOutcome(False, exc.reason, exc.message)


def _payload_summary(event: VerifiedEvent) -> dict:
    """What the timeline keeps of a payload: the event fields, nothing else."""
    return {
        "type": event.event_type,
        "webhook_id": event.webhook_id,
        "transaction_id": event.transaction_id,
        "session_id": event.session_id,
        "status": event.status.value if event.status else None,
        "amount": event.amount,
        "currency": event.currency,
    }


def verify(headers, body: bytes) -> VerifiedEvent | WebhookRejected:
    """The delivery's event if its signature and body check out, else why not (the raw body)."""
    try:
        return get_gateway().verify_webhook(headers, body)
    except WebhookRejected as exc:
        return exc


def is_signed(verified: VerifiedEvent | WebhookRejected) -> bool:
    return isinstance(verified, VerifiedEvent)


def _reports_status(event: VerifiedEvent) -> bool:
    """The delivery reports a payment's status this app knows, in an event type it acts on."""
    return event.event_type == STATUS_EVENT and event.status is not None


def _received_line(transaction_id: str, event: VerifiedEvent, summary: dict) -> dict:
    return timeline.line(transaction_id, "webhook", "webhook", f"webhook: gateway says {event.status.value}",
                         outcome="received", detail=summary)


def _move_detail(event: VerifiedEvent, summary: dict) -> dict:
    """The detail of the status line a delivery's move writes."""
    return {"webhook_id": event.webhook_id, **summary}


def receive(verified: VerifiedEvent | WebhookRejected, body: bytes, remote_addr: str | None = None
            ) -> WebhookOutcome:
    """Handle one delivery, verified by ``verify`` before any database work."""
    gateway = get_gateway()
    if not is_signed(verified):
        return _reject(verified, body, remote_addr)
    event = verified

    summary = _payload_summary(event)

    def delivery(outcome: str) -> dict:
        """The delivery's dedup row: a second copy of the delivery fails on its unique key."""
        return {
            "gateway": gateway.name, "webhook_id": event.webhook_id, "transaction_id": event.transaction_id,
            "event_type": event.event_type, "status": summary["status"], "amount": event.amount,
            "currency": event.currency, "outcome": outcome, "payload": summary, "received_at": utcnow(),
        }

    def store(outcome: str) -> None:
        """Record the delivery in the same database transaction as what it caused, just before that commits."""
        db.session.connection().execute(_INSERT_EVENT, delivery(outcome))

    if _reports_status(event) and event.status == Status.SUCCESS and apply_reported_success(
            event.transaction_id, event.amount, event.currency, source="webhook", detail=_move_detail(event, summary),
            lines=[_received_line(event.transaction_id, event, summary)], delivery=delivery(Outcome.APPLIED.value)):
        WEBHOOKS.labels(Outcome.APPLIED.value).inc()  # the common delivery, in one statement on PostgreSQL
        return WebhookOutcome(True, Outcome.APPLIED.value, "Received.")

    try:
        outcome = _apply(event, summary, store)
    except IntegrityError as exc:
        db.session.rollback()
        if "webhook_events" not in str(exc.orig) and DEDUP_KEY not in str(exc.orig):
            raise
        log.info("txn=%s webhook %s duplicate, ignored", event.transaction_id, event.webhook_id)
        WEBHOOKS.labels("duplicate").inc()
        return WebhookOutcome(True, "duplicate", "Already received.")
    WEBHOOKS.labels(outcome).inc()
    return WebhookOutcome(True, outcome, "Received.")


def _apply(event: VerifiedEvent, summary: dict, store: Callable[[str], None]) -> str:
    """Act on a verified event and ``store`` the delivery before committing; returns the outcome.

    A delivery seen before makes ``store`` raise IntegrityError, which rolls all of it back.
    """
    tx = read_state(event.transaction_id) if event.transaction_id else None
    if tx is None:
        store("unknown_transaction")
        db.session.commit()
        log.info("webhook %s for unknown transaction %s acknowledged", event.webhook_id, event.transaction_id)
        return "unknown_transaction"
    if not _reports_status(event):
        timeline.record(tx.id, "webhook", "webhook", f"webhook {event.event_type} ignored", outcome="ignored",
                        detail=summary)
        store("ignored")
        db.session.commit()
        log.info("txn=%s webhook %s ignored: %.64s without a status this app knows", tx.id, event.webhook_id,
                 event.event_type)
        return "ignored"
    timeline.add(_received_line(tx.id, event, summary))

    def outcome_of(decision) -> str:
        return MISMATCH if decision.flag_reason == MISMATCH else decision.outcome.value

    result = apply_report(tx.id, event.status, event.amount, event.currency, source="webhook",
                          detail=_move_detail(event, summary),
                          before_commit=lambda decision: store(outcome_of(decision)), known=tx)
    return outcome_of(result.decision)
