"""/metrics reports the state of the books, read from the database at each scrape, for alerting."""

from datetime import timedelta

from sqlalchemy import update

from app.extensions import db
from app.jobs.reconcile import run_pass
from app.models import Transaction
from app.models.clock import utcnow
from app.services import refunds
from tests import fulfillment_probe
from tests.conftest import GATEWAY, place_order, post_webhook, start_payment, status_event
from tests.jobs.support import answer_expire
from tests.test_hardening import _metric

GAUGES = ("checkout_pending_transactions", "checkout_overdue_pending_transactions",
          "checkout_transactions_needing_review", "checkout_orders_awaiting_fulfillment")


def gauges(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    assert all(f"# TYPE {name} gauge" in text for name in GAUGES)
    return {name: _metric(text, name) for name in GAUGES}


def payment(client, gateway) -> str:
    order = place_order(client)
    return start_payment(client, gateway, order["order_id"])["transaction_id"]


def test_the_gauges_follow_payments_through_expiry_review_and_a_failing_handler(app, client, gateway):
    assert gauges(client) == dict.fromkeys(GAUGES, 0)
    overdue, flagged_overdue, fresh, shipped_later = (payment(client, gateway) for _ in range(4))
    with app.app_context():
        past = utcnow() - timedelta(seconds=app.config["PAYMENT_EXPIRES_AFTER"] + 60)
        db.session.execute(update(Transaction).where(Transaction.id.in_([overdue, flagged_overdue]))
                           .values(created_at=past, expires_at=past + timedelta(seconds=60)))
        db.session.execute(update(Transaction).where(Transaction.id == flagged_overdue)
                           .values(needs_review=True, review_reason="amount_mismatch"))
        db.session.commit()
    assert gauges(client) == {"checkout_pending_transactions": 4, "checkout_overdue_pending_transactions": 1,
                              "checkout_transactions_needing_review": 1, "checkout_orders_awaiting_fulfillment": 0}

    fulfillment_probe.reset(fail_times=1)  # the warehouse is down for the first paid order
    assert post_webhook(client, status_event(shipped_later, "success", 1999)).status_code == 200
    assert post_webhook(client, status_event(fresh, "success", 1999)).status_code == 200
    now = gauges(client)
    assert now["checkout_orders_awaiting_fulfillment"] == 1 and now["checkout_pending_transactions"] == 2

    answer_expire(gateway, overdue, 200)  # the gateway closes the overdue session when asked
    with app.app_context():
        assert run_pass().fulfilled == 1  # reconciliation hands the order to the handler again
    after = gauges(client)
    assert after["checkout_orders_awaiting_fulfillment"] == 0
    assert after["checkout_overdue_pending_transactions"] == 0  # and the expiry pass closed the overdue one


def test_a_database_that_does_not_answer_gives_minus_one_not_a_failed_scrape(make_app):
    dead = make_app(SQLALCHEMY_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/none")
    response = dead.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert all(_metric(text, name) == -1 for name in GAUGES)
    assert "checkout_http_requests_total" in text


def test_an_order_held_after_a_full_refund_is_not_awaiting_fulfillment(app, client, gateway):
    """It will never be handed to the handler: counting it would keep the alert up for good."""
    fulfillment_probe.reset(fail_times=1)
    tx_id = payment(client, gateway)
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    assert gauges(client)["checkout_orders_awaiting_fulfillment"] == 1
    gateway.post(f"{GATEWAY}/refunds", json={"refund_id": "re_1", "status": "succeeded"})
    with app.app_context():
        refunds.refund(tx_id, 1999, "ops@example.test")
        assert run_pass().fulfilled == 0
    assert gauges(client)["checkout_orders_awaiting_fulfillment"] == 0
