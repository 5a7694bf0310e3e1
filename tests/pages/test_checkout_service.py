"""app.services.checkout: shopper cancel, the return-from-gateway check, the payment lookup."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from app.domain.status import Status
from app.extensions import db
from app.models import Order, Transaction, TransactionEvent
from app.services import checkout
from app.services.errors import ServiceError
from tests import fulfillment_probe
from tests.conftest import GATEWAY, place_order, post_webhook, start_payment, status_event

from .support import calls_to, gateway_expire, gateway_status


@pytest.fixture
def pending(client, gateway):
    """A pending payment of one tee (19.99 USD) with its gateway session open."""
    return start_payment(client, gateway, place_order(client)["order_id"])


def _tx(tx_id: str) -> Transaction:
    db.session.expire_all()
    return db.session.get(Transaction, tx_id)


def test_cancel_expires_the_session_then_cancels(app, gateway, pending):
    gateway_expire(gateway, pending["transaction_id"])
    with app.app_context():
        assert checkout.cancel_payment(pending["transaction_id"]) == Status.CANCELLED
        assert _tx(pending["transaction_id"]).status == "cancelled"
        sources = db.session.scalars(select(TransactionEvent.source).where(
            TransactionEvent.transaction_id == pending["transaction_id"], TransactionEvent.kind == "status")).all()
        assert sources == ["shopper"]
    assert calls_to(gateway, "/expire") == 1
    assert fulfillment_probe.calls == []


def test_cancel_when_the_gateway_says_paid_makes_it_success_and_fulfills_once(app, client, gateway, pending):
    tx_id = pending["transaction_id"]
    gateway_expire(gateway, tx_id, paid=True)
    with app.app_context():
        assert checkout.cancel_payment(tx_id) == Status.SUCCESS
        assert _tx(tx_id).status == "success"
        order = db.session.get(Order, pending["order_id"])
        assert order.status == "fulfilled" and order.paid_transaction_id == tx_id
    # The success webhook that follows changes nothing and fulfills nothing again.
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    with app.app_context():
        assert checkout.cancel_payment(tx_id) == Status.SUCCESS  # no longer pending: nothing to do
    assert fulfillment_probe.calls == [(pending["order_id"], tx_id)]
    assert calls_to(gateway, "/expire") == 1


def test_cancel_of_a_final_payment_does_not_call_the_gateway(app, client, gateway, pending):
    post_webhook(client, status_event(pending["transaction_id"], "failure", 1999))
    with app.app_context():
        assert checkout.cancel_payment(pending["transaction_id"]) == Status.FAILURE
    assert calls_to(gateway, "/expire") == 0


def test_cancel_without_a_gateway_session_cancels_locally(app, client, gateway):
    order = place_order(client)
    with app.app_context():
        tx = Transaction(order_id=order["order_id"], amount=1999, currency="USD", status="pending",
                         gateway="sandbox", expires_at=db.session.get(Order, order["order_id"]).created_at + timedelta(hours=1))
        db.session.add(tx)
        db.session.commit()
        assert checkout.cancel_payment(tx.id) == Status.CANCELLED
    assert calls_to(gateway, "/expire") == 0


def test_cancel_with_the_gateway_down_leaves_it_pending(app, gateway, pending):
    tx_id = pending["transaction_id"]
    gateway.add("POST", f"{GATEWAY}/sessions/cs_{tx_id}/expire", body=requests.ConnectionError("down"))
    with app.app_context():
        with pytest.raises(ServiceError) as refused:
            checkout.cancel_payment(tx_id)
        assert refused.value.status == 502 and refused.value.code == "gateway_unavailable"
        assert _tx(tx_id).status == "pending"


def test_cancel_of_an_unknown_transaction_is_404(app):
    with app.app_context(), pytest.raises(ServiceError) as refused:
        checkout.cancel_payment("txn_nope")
    assert refused.value.status == 404


def test_return_check_applies_the_gateway_status(app, gateway, pending):
    tx_id = pending["transaction_id"]
    gateway_status(gateway, tx_id, "success", 1999)
    with app.app_context():
        assert checkout.check_on_return(tx_id) is True
        assert _tx(tx_id).status == "success"
        assert db.session.get(Order, pending["order_id"]).status == "fulfilled"
    assert fulfillment_probe.calls == [(pending["order_id"], tx_id)]


def test_return_check_asks_the_gateway_at_most_once_per_interval(app, gateway, pending):
    tx_id = pending["transaction_id"]
    gateway_status(gateway, tx_id, "pending", 1999)
    with app.app_context():
        assert checkout.check_on_return(tx_id) is True
        assert checkout.check_on_return(tx_id) is False
        assert checkout.check_on_return(tx_id) is False
        assert calls_to(gateway, f"/status/{tx_id}") == 1
        # Once the interval has passed the gateway is asked again.
        earlier = _tx(tx_id).last_checked_at - checkout.RETURN_CHECK_INTERVAL - timedelta(seconds=1)
        db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(last_checked_at=earlier))
        db.session.commit()
        assert checkout.check_on_return(tx_id) is True
    assert calls_to(gateway, f"/status/{tx_id}") == 2


def test_return_check_of_a_final_payment_does_not_ask(app, client, gateway, pending):
    post_webhook(client, status_event(pending["transaction_id"], "success", 1999))
    with app.app_context():
        assert checkout.check_on_return(pending["transaction_id"]) is False
    assert calls_to(gateway, "/status/") == 0


def test_return_check_refuses_a_success_for_another_amount(app, gateway, pending):
    tx_id = pending["transaction_id"]
    gateway_status(gateway, tx_id, "success", 1)
    with app.app_context():
        checkout.check_on_return(tx_id)
        tx = _tx(tx_id)
        assert tx.status == "pending" and tx.needs_review and tx.review_reason == "amount_mismatch"
    assert fulfillment_probe.calls == []


def test_return_check_survives_a_gateway_fault(app, gateway, pending):
    tx_id = pending["transaction_id"]
    gateway.add("GET", f"{GATEWAY}/status/{tx_id}", body=requests.ConnectionError("down"))
    with app.app_context():
        assert checkout.check_on_return(tx_id) is True
        assert _tx(tx_id).status == "pending"
        outcomes = db.session.scalars(select(TransactionEvent.outcome).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "poll")).all()
        assert outcomes == ["error"]


def test_lookup_with_the_right_access_code_finds_the_payment(app, pending):
    with app.app_context():
        code = db.session.get(Order, pending["order_id"]).access_code
        found = checkout.find_payment(pending["order_id"], code)
        assert found is not None and found.transaction.id == pending["transaction_id"]
        # People type codes in lower case, with the dash shown, with spaces.
        typed = f" {code[:5].lower()}-{code[5:].lower()} "
        assert checkout.find_payment(f" {pending['order_id']} ", typed).transaction.id == pending["transaction_id"]


@pytest.mark.parametrize("order_id, code", [
    (None, "0000000000"),  # the real order, a wrong code
    (None, ""),
    ("ord_doesnotexist", None),  # an unknown order with the real order's code
    ("", None),
    ("x" * 500, None),
])
def test_lookup_refuses_wrong_pairs_alike(app, pending, order_id, code):
    with app.app_context():
        real = db.session.get(Order, pending["order_id"])
        assert checkout.find_payment(order_id if order_id is not None else real.id,
                                     code if code is not None else real.access_code) is None


def test_lookup_prefers_the_paying_transaction(app, client, gateway, pending):
    order_id = pending["order_id"]
    post_webhook(client, status_event(pending["transaction_id"], "success", 1999))
    with app.app_context():
        # A later payment of the same order (refused at initiation, made here directly) is not the one shown.
        paid = _tx(pending["transaction_id"])
        later = Transaction(order_id=order_id, amount=1999, currency="USD", status="failure", gateway="sandbox",
                            expires_at=paid.expires_at, created_at=paid.created_at + timedelta(minutes=1))
        db.session.add(later)
        db.session.commit()
        code = db.session.get(Order, order_id).access_code
        assert checkout.find_payment(order_id, code).transaction.id == pending["transaction_id"]


def test_lookup_of_an_order_without_payments(app, client):
    order = place_order(client)
    with app.app_context():
        found = checkout.find_payment(order["order_id"], order["access_code"])
        assert found.order.id == order["order_id"] and found.transaction is None


def test_access_code_display_groups_it():
    assert checkout.display_access_code("ABCDEFGHJK") == "ABCDE-FGHJK"
    assert checkout.normalise_access_code(" abcde-fghjk ") == "ABCDEFGHJK"


def test_cancel_never_turns_a_wrong_amount_success_into_a_paid_order(app, client, gateway, pending):
    """The gateway's 409 carries no amount: the app asks for the payment before believing it."""
    tx_id = pending["transaction_id"]
    assert post_webhook(client, status_event(tx_id, "success", 1)).get_json()["outcome"] == "amount_mismatch"
    gateway_expire(gateway, tx_id, paid=True, amount=1)
    with app.app_context():
        assert checkout.cancel_payment(tx_id) == Status.PENDING
        tx = _tx(tx_id)
        assert tx.status == "pending" and tx.needs_review and tx.review_reason == "amount_mismatch"
        assert db.session.get(Order, pending["order_id"]).status == "open"
    assert fulfillment_probe.calls == []
