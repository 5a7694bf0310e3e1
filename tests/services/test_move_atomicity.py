"""Contract section 1: an order becomes paid (with paid_transaction_id) in the same database
transaction as its payment's move to success.

What is committed is read through a connection of its own (a separate engine on the same
database), never through the session that made the change.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from app.domain.status import Status
from app.extensions import db
from app.models import Order, Transaction
from app.services.status_moves import apply_status
from tests import fulfillment_probe
from tests.conftest import place_order, post_webhook, start_payment, status_event


@pytest.fixture
def committed(database_url):
    """Read what is committed, through a connection that is not the app's."""
    engine = sa.create_engine(database_url, poolclass=NullPool)

    def read(tx_id: str, order_id: str) -> tuple[str, str, str | None]:
        with engine.connect() as conn:
            tx_status = conn.scalar(sa.select(Transaction.status).where(Transaction.id == tx_id))
            order = conn.execute(sa.select(Order.status, Order.paid_transaction_id)
                                 .where(Order.id == order_id)).one()
        return tx_status, order.status, order.paid_transaction_id

    yield read
    engine.dispose()


@pytest.fixture
def payment(client, gateway) -> tuple[str, str]:
    order_id = place_order(client)["order_id"]
    return order_id, start_payment(client, gateway, order_id)["transaction_id"]


def _failing_write(tx_id: str):
    """A write in the move's own database transaction that the database refuses (a second
    transaction row under an existing id)."""
    def write(_decision) -> None:
        db.session.connection().execute(sa.text("INSERT INTO transactions (id) VALUES (:id)"), {"id": tx_id})
    return write


def test_a_failure_after_the_move_but_before_the_commit_persists_neither(app, payment, committed):
    order_id, tx_id = payment
    with app.app_context():
        with pytest.raises(IntegrityError):
            apply_status(tx_id, Status.SUCCESS, source="webhook", before_commit=_failing_write(tx_id))
        db.session.rollback()
    assert committed(tx_id, order_id) == ("pending", "open", None)
    assert fulfillment_probe.calls == []
    # the same move without the failure: both together
    with app.app_context():
        result = apply_status(tx_id, Status.SUCCESS, source="webhook")
    assert result.applied and result.order_paid
    tx_status, order_status, paid_by = committed(tx_id, order_id)
    assert (tx_status, paid_by) == ("success", tx_id) and order_status in ("paid", "fulfilled")


def test_at_the_commit_both_changes_are_still_uncommitted_and_after_it_both_are_committed(app, payment, committed):
    """Seen from another connection, the move and the paid order appear at the same moment."""
    order_id, tx_id = payment
    seen_before_commit = []
    with app.app_context():
        result = apply_status(tx_id, Status.SUCCESS, source="webhook",
                              before_commit=lambda _decision: seen_before_commit.append(committed(tx_id, order_id)))
        assert result.applied and result.order_paid
    assert seen_before_commit == [("pending", "open", None)]
    assert committed(tx_id, order_id) == ("success", "fulfilled", tx_id)  # paid, then the handler ran
    assert fulfillment_probe.calls == [(order_id, tx_id)]


def test_a_webhook_id_seen_before_rolls_back_its_whole_move(app, client, gateway, payment, committed):
    """The webhook's dedup row is written just before the commit: a delivery whose webhook-id was
    used before fails there, and neither the payment's success nor the paid order may remain."""
    order_id, tx_id = payment
    other_order = place_order(client)["order_id"]
    other_tx = start_payment(client, gateway, other_order)["transaction_id"]
    first = post_webhook(client, status_event(other_tx, "failure", 1999), msg_id="msg_used_once")
    assert first.status_code == 200

    again = post_webhook(client, status_event(tx_id, "success", 1999), msg_id="msg_used_once")

    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"
    assert committed(tx_id, order_id) == ("pending", "open", None)
    assert fulfillment_probe.calls == []
    # a delivery of its own then pays the order, once
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    assert committed(tx_id, order_id) == ("success", "fulfilled", tx_id)
    assert fulfillment_probe.calls == [(order_id, tx_id)]
