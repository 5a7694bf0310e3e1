"""Send queued webhooks: sign, POST, record the answer, schedule the retry.

Each attempt is signed afresh (new ``webhook-timestamp``, same ``webhook-id``). A delivery
is claimed with a conditional update before it is sent, so two workers never send the same
attempt. Non-2xx answers, timeouts and connection errors are retried on the backoff
schedule until ``SANDBOX_DELIVERY_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import requests
from sqlalchemy import case, func, or_, select, type_coerce, update

from app.gateways.signing import sign
from app.sandbox.models import DELIVERED, GAVE_UP, HELD, QUEUED, Delivery, UTCDateTime, utcnow
from app.sandbox.settings import retry_delay_seconds

log = logging.getLogger(__name__)

USER_AGENT = "checkout-sandbox-gateway/1"
MAX_ANSWER_CHARS = 500


def _lease_seconds(settings) -> float:
    return float(settings["SANDBOX_DELIVERY_TIMEOUT"]) * 2 + 30


def due_deliveries(runtime, now: datetime, limit: int = 20) -> list[int]:
    """Ids of queued deliveries whose next attempt is due, oldest first."""
    with runtime.storage.session() as db:
        return list(
            db.scalars(
                select(Delivery.id)
                .where(
                    Delivery.state == QUEUED,
                    Delivery.next_attempt_at <= now,
                    or_(Delivery.locked_until.is_(None), Delivery.locked_until < now),
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
            )
        )


def _claim(runtime, delivery_id: int, now: datetime) -> Delivery | None:
    with runtime.storage.session() as db:
        result = db.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.state == QUEUED,
                or_(Delivery.locked_until.is_(None), Delivery.locked_until < now),
            )
            .values(locked_until=now + timedelta(seconds=_lease_seconds(runtime.settings)))
        )
        db.commit()
        return db.get(Delivery, delivery_id) if result.rowcount == 1 else None


def _post(runtime, delivery: Delivery) -> tuple[int | None, str]:
    body = delivery.body.encode()
    headers = sign(runtime.settings["SANDBOX_WEBHOOK_SECRET"], delivery.webhook_id, body).as_dict()
    headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
    timeout = float(runtime.settings["SANDBOX_DELIVERY_TIMEOUT"])
    try:
        answer = requests.post(delivery.url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.Timeout:
        return None, f"timed out after {timeout:g}s"
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ANSWER_CHARS]
    return answer.status_code, answer.text[:MAX_ANSWER_CHARS]


def attempt(runtime, delivery_id: int) -> bool | None:
    """Make one attempt at a due delivery; True delivered, False not (yet), None not claimed."""
    now = utcnow()
    delivery = _claim(runtime, delivery_id, now)
    if delivery is None:
        return None
    status_code, answer = _post(runtime, delivery)
    finished_at = utcnow()
    attempts = delivery.attempts + 1
    ok = status_code is not None and 200 <= status_code < 300
    values = {
        "attempts": attempts,
        "last_attempt_at": finished_at,
        "last_status_code": status_code,
        "last_answer": answer,
        "locked_until": None,
    }
    if ok:
        values.update(state=DELIVERED, delivered_at=finished_at, next_attempt_at=None)
    elif attempts >= int(runtime.settings["SANDBOX_DELIVERY_MAX_ATTEMPTS"]):
        values.update(state=GAVE_UP, next_attempt_at=None)
    else:
        delay = retry_delay_seconds(attempts, runtime.settings["SANDBOX_DELIVERY_BACKOFF_FACTOR"])
        values.update(next_attempt_at=finished_at + timedelta(seconds=delay))
    with runtime.storage.session() as db:
        db.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))
        if values.get("state") in (DELIVERED, GAVE_UP):
            # Whatever was held behind this delivery (a duplicate, a stale event) may go now.
            db.execute(
                update(Delivery)
                .where(Delivery.after_delivery_id == delivery_id, Delivery.state == HELD)
                .values(state=QUEUED, next_attempt_at=finished_at)
            )
        db.commit()
    level = logging.INFO if ok else logging.WARNING
    log.log(
        level,
        "sandbox webhook %s for transaction %s (%s) attempt %d: %s",
        delivery.webhook_id, delivery.transaction_id, delivery.event_status, attempts,
        status_code if status_code is not None else answer,
    )
    if not ok and values.get("state") == GAVE_UP:
        log.error("sandbox webhook %s for transaction %s gave up after %d attempts",
                  delivery.webhook_id, delivery.transaction_id, attempts)
    return ok


def deliver_due(runtime, now: datetime | None = None) -> int:
    """Attempt every delivery due at ``now``; returns the number of attempts made."""
    made = 0
    for delivery_id in due_deliveries(runtime, now or utcnow()):
        if runtime.stopping():
            break
        made += attempt(runtime, delivery_id) is not None
    return made


def next_attempt_at(runtime) -> datetime | None:
    """The earliest next attempt among queued deliveries, for the worker's sleep."""
    with runtime.storage.session() as db:
        # A delivery leased by a crashed sender is due again only when its lease ends.
        due_at = case(
            (Delivery.locked_until > Delivery.next_attempt_at, Delivery.locked_until),
            else_=Delivery.next_attempt_at,
        )
        return db.scalar(select(func.min(type_coerce(due_at, UTCDateTime))).where(Delivery.state == QUEUED))
