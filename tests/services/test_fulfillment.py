"""Fulfillment claims: retries are fair, and an overrun claim does not finish twice."""

from datetime import timedelta

from sqlalchemy import update

from app.extensions import db
from app.models import Order, Transaction
from app.models.clock import utcnow
from app.services.fulfillment import fulfill_order, orders_awaiting_fulfillment, run_claimed
from tests import fulfillment_probe
from tests.conftest import place_order


def _paid(client, attempts: int) -> str:
    order_id = place_order(client)["order_id"]
    db.session.execute(update(Order).where(Order.id == order_id).values(
        status="paid", paid_transaction_id=None, paid_at=utcnow() - timedelta(minutes=attempts),
        fulfillment_attempts=attempts))
    db.session.commit()
    return order_id


def test_orders_that_keep_failing_do_not_starve_new_ones(app, client, ctx):
    broken = [_paid(client, 5), _paid(client, 4)]
    fresh = _paid(client, 0)
    assert orders_awaiting_fulfillment(limit=1) == [fresh]
    assert orders_awaiting_fulfillment(limit=3)[1:] == [broken[1], broken[0]]


def _claim_taken_over(client, tx_id: str):
    """A paid order whose claim run A took an hour ago and run B holds now: (order, A's, B's)."""
    order_id = _paid(client, 0)
    db.session.add(Transaction(id=tx_id, order_id=order_id, amount=1999, currency="USD", status="success",
                               gateway="sandbox", expires_at=utcnow()))
    mine, theirs = utcnow() - timedelta(hours=1), utcnow()
    db.session.execute(update(Order).where(Order.id == order_id).values(fulfillment_claimed_at=theirs))
    db.session.commit()
    return order_id, mine, theirs


def test_a_run_whose_claim_was_taken_over_does_not_mark_fulfilled(app, client, ctx):
    order_id, mine, theirs = _claim_taken_over(client, "txn_x")
    assert run_claimed(order_id, "txn_x", mine) is False
    assert db.session.get(Order, order_id, populate_existing=True).status == "paid"
    assert run_claimed(order_id, "txn_x", theirs) is True
    assert db.session.get(Order, order_id, populate_existing=True).status == "fulfilled"
    assert len(fulfillment_probe.calls) == 2  # the handler ran for both, only one finished


def test_a_run_whose_claim_was_taken_over_and_fails_leaves_the_new_claim_alone(app, client, ctx):
    """Run A outlived its lease, run B claimed the order, then A's handler raised: A gives back
    only its own claim, so B's stays and nobody else runs the handler beside B."""
    order_id, mine, theirs = _claim_taken_over(client, "txn_y")
    fulfillment_probe.reset(fail_times=1)

    assert run_claimed(order_id, "txn_y", mine) is False

    assert db.session.get(Order, order_id, populate_existing=True).fulfillment_claimed_at == theirs
    assert fulfill_order(order_id) is False  # B still holds it
    assert fulfillment_probe.calls == []
