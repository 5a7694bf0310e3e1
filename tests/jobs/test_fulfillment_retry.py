"""Stage 1 of a pass: paid orders whose fulfillment handler failed are handed to it again."""

from datetime import timedelta

from sqlalchemy import update

from app.domain.status import Status
from app.extensions import db
from app.models import Order
from app.models.clock import utcnow
from app.services.status_moves import apply_status
from tests import fulfillment_probe

from .support import CHECK_AFTER, answer_status, order_status, pending_payment, reconcile, timeline


def test_a_failing_handler_is_retried_by_the_next_pass(app, client, gateway):
    fulfillment_probe.reset(fail_times=1)
    order_id, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "success")

    first = reconcile(app)
    assert first.changed == 1 and first.fulfilled == 0
    assert order_status(app, order_id) == "paid"
    assert fulfillment_probe.calls == []
    assert ("fulfillment", "error") in [line[:2] for line in timeline(app, tx_id)]

    second = reconcile(app)
    assert (second.due, second.fulfilled, second.errors) == (0, 1, 0)
    assert order_status(app, order_id) == "fulfilled"
    assert fulfillment_probe.calls == [(order_id, tx_id)]
    # Neither run held a database transaction open while the handler worked (a connection idle
    # in one can be ended under it, and the handler's return then went unrecorded).
    assert fulfillment_probe.in_transaction == [False, False]

    assert reconcile(app).fulfilled == 0
    assert fulfillment_probe.calls == [(order_id, tx_id)]


def test_an_order_another_process_is_fulfilling_is_left_to_it_until_its_claim_runs_out(app, client, gateway):
    fulfillment_probe.reset(fail_times=1)
    order_id, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "success")
    reconcile(app)  # paid; the handler failed and the claim was released
    lease = timedelta(seconds=app.config["FULFILLMENT_LEASE_SECONDS"])
    claim(app, order_id, utcnow() - lease + timedelta(minutes=1))  # another process's handler is running
    assert reconcile(app).fulfilled == 0
    assert fulfillment_probe.calls == [] and order_status(app, order_id) == "paid"
    claim(app, order_id, utcnow() - lease - timedelta(minutes=1))  # that process died long ago
    assert reconcile(app).fulfilled == 1
    assert fulfillment_probe.calls == [(order_id, tx_id)]


def claim(app, order_id: str, at) -> None:
    with app.app_context():
        db.session.execute(update(Order).where(Order.id == order_id).values(fulfillment_claimed_at=at))
        db.session.commit()


def test_a_handler_that_keeps_failing_is_counted_as_an_error_each_pass(app, client, gateway):
    fulfillment_probe.reset(fail_times=3)
    order_id, tx_id = pending_payment(app, client, gateway, 10)
    with app.app_context():
        apply_status(tx_id, Status.SUCCESS, source="webhook")  # its fulfillment fails (1)
    assert reconcile(app).errors == 1  # (2)
    assert reconcile(app).errors == 1  # (3)
    summary = reconcile(app)
    assert (summary.fulfilled, summary.errors) == (1, 0)
    assert order_status(app, order_id) == "fulfilled"
    assert fulfillment_probe.calls == [(order_id, tx_id)]
