"""Queue ``payment.status_changed`` webhooks, in the same DB transaction as the status move.

Fault knobs shape what gets queued: dropped (recorded, never sent), delayed, delivered
twice (a second row with the same webhook id, held until the first finishes), or followed
by a stale earlier event (out of order).
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.sandbox.faults import Faults
from app.sandbox.models import DROPPED, HELD, QUEUED, Delivery, PaymentSession
from app.sandbox.protocol import event_body

log = logging.getLogger(__name__)


def new_webhook_id() -> str:
    """A fresh, unguessable Standard Webhooks message id."""
    return "msg_" + secrets.token_hex(16)


def _row(session: PaymentSession, webhook_id: str, status: str, body: str, **values) -> Delivery:
    return Delivery(
        webhook_id=webhook_id,
        transaction_id=session.transaction_id,
        event_status=status,
        url=session.callback_url,
        body=body,
        **values,
    )


def queue_status_event(
    db: Session,
    session: PaymentSession,
    status: str,
    faults: Faults,
    now: datetime,
    stale: tuple[str, datetime] | None = None,
) -> list[Delivery]:
    """Add the deliveries for ``session`` moving to ``status``; the caller commits.

    ``stale`` is ``(status, when)`` of an earlier event to deliver after this one when the
    out-of-order fault is on. Returns the rows added (flushed, so they have ids).
    """
    webhook_id = new_webhook_id()
    body = event_body(session, status, now)
    tx = session.transaction_id
    if faults.drop_webhook:
        db.add(_row(session, webhook_id, status, body, state=DROPPED, note="dropped by fault knob"))
        log.warning("sandbox webhook %s for transaction %s (%s) dropped by fault knob", webhook_id, tx, status)
        return []

    first = _row(
        session,
        webhook_id,
        status,
        body,
        state=QUEUED,
        next_attempt_at=now + timedelta(seconds=faults.delay_webhook_seconds),
        note=f"delayed {faults.delay_webhook_seconds}s by fault knob" if faults.delay_webhook_seconds else None,
    )
    db.add(first)
    db.flush()
    rows = [first]
    if faults.duplicate_webhook:
        rows.append(
            _row(session, webhook_id, status, body, state=HELD, after_delivery_id=first.id, note="duplicate")
        )
    if faults.out_of_order and stale is not None:
        stale_status, stale_at = stale
        rows.append(
            _row(
                session,
                new_webhook_id(),
                stale_status,
                event_body(session, stale_status, stale_at),
                state=HELD,
                after_delivery_id=first.id,
                note=f"stale {stale_status} event, sent after {status} (out of order)",
            )
        )
    db.add_all(rows[1:])
    db.flush()
    log.info(
        "sandbox queued webhook %s for transaction %s: %s (%d deliveries)", webhook_id, tx, status, len(rows)
    )
    return rows
