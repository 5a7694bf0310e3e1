"""Helpers of the jobs suite: pending payments of a chosen age, gateway answers, row reads."""

from __future__ import annotations

import json
from datetime import timedelta

import responses
from sqlalchemy import select, update

from app.extensions import db
from app.jobs.reconcile import PassSummary, run_pass
from app.models import Order, Transaction, TransactionEvent
from app.models.clock import utcnow
from tests.conftest import GATEWAY, place_order, start_payment

CHECK_AFTER = 900  # TestConfig.PAYMENT_STATUS_CHECK_AFTER
EXPIRES_AFTER = 1800  # TestConfig.PAYMENT_EXPIRES_AFTER
TEE_PRICE = 1999


def set_age(app, tx_ids: str | list[str], seconds: float) -> None:
    """Test data setup: make the transaction(s) look ``seconds`` old (one created_at for all)."""
    tx_ids = [tx_ids] if isinstance(tx_ids, str) else tx_ids
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id.in_(tx_ids))
                           .values(created_at=utcnow() - timedelta(seconds=seconds)))
        db.session.commit()


def pending_payment(app, client, gateway, age: float) -> tuple[str, str]:
    """A pending transaction with a gateway session, ``age`` seconds old; returns (order_id, tx_id)."""
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    set_age(app, tx_id, age)
    return order_id, tx_id


def answer_status(gateway, tx_id: str, status: str, amount: int = TEE_PRICE, currency: str = "USD") -> None:
    gateway.add(responses.GET, f"{GATEWAY}/status/{tx_id}",
                json={"transaction_id": tx_id, "status": status, "amount": amount, "currency": currency})


def status_calls(gateway, tx_id: str | None = None) -> int:
    return sum(1 for c in gateway.calls if "/status/" in c.request.url
               and (tx_id is None or c.request.url.endswith(f"/status/{tx_id}")))


def expire_calls(gateway, tx_id: str | None = None) -> int:
    return sum(1 for c in gateway.calls if c.request.url.endswith("/expire")
               and (tx_id is None or f"/sessions/cs_{tx_id}/" in c.request.url))


def answer_expire(gateway, tx_id: str, code: int) -> None:
    body = {"status": "expired" if code == 200 else "success"}
    gateway.add(responses.POST, f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=code, body=json.dumps(body),
                content_type="application/json")


def reconcile(app, **kwargs) -> PassSummary:
    with app.app_context():
        return run_pass(**kwargs)


def row(app, tx_id: str) -> Transaction:
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        db.session.expunge(tx)
        return tx


def order_status(app, order_id: str) -> str:
    with app.app_context():
        return db.session.scalar(select(Order.status).where(Order.id == order_id))


def timeline(app, tx_id: str) -> list[tuple[str, str | None, str]]:
    """(kind, outcome, summary) of each line on the transaction's timeline, oldest first."""
    with app.app_context():
        events = db.session.scalars(select(TransactionEvent).where(TransactionEvent.transaction_id == tx_id)
                                    .order_by(TransactionEvent.id))
        return [(e.kind, e.outcome, e.summary) for e in events]


def poller_lines(app, tx_id: str) -> list[tuple[str, str | None, str]]:
    with app.app_context():
        events = db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.source == "poller").order_by(TransactionEvent.id))
        return [(e.kind, e.outcome, e.summary) for e in events]


def make_due(app, tx_id: str) -> None:
    """Test data setup: move a backed-off transaction's next check into the past."""
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(next_check_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
