"""Contract section 5: every later status change emits payment_status_update to the room, after
the change is committed, from whichever process or thread made it.

A spy wrapped around the Socket.IO emit reads the transaction's status through a database
connection of its own at the moment of the emit: that connection must already see the new status.
"""

from __future__ import annotations

import pytest
import responses
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from app.extensions import db, socketio
from app.models import Transaction
from app.realtime import room_for
from app.services import checkout, refunds
from tests.conftest import GATEWAY, place_order, post_webhook, start_payment, status_event
from tests.jobs.support import CHECK_AFTER, EXPIRES_AFTER, answer_expire, answer_status, reconcile, set_age
from tests.pages.support import gateway_expire


@pytest.fixture
def emits(monkeypatch, database_url) -> list[dict]:
    """Every payment_status_update sent to a room, with the status committed at that moment."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    seen: list[dict] = []
    real_emit = socketio.emit

    def spy(event, data=None, *args, **kwargs):
        room = kwargs.get("to") or kwargs.get("room")
        if event == "payment_status_update" and isinstance(room, str) and room.startswith("txn:"):
            with engine.connect() as conn:
                committed = conn.scalar(sa.select(Transaction.status)
                                        .where(Transaction.id == data["transaction_id"]))
            seen.append({"room": room, "sent": data["status"], "committed": committed,
                         "transaction_id": data["transaction_id"]})
        return real_emit(event, data, *args, **kwargs)

    monkeypatch.setattr(socketio, "emit", spy)
    yield seen
    engine.dispose()


@pytest.fixture
def payment(client, gateway) -> dict:
    return start_payment(client, gateway, place_order(client)["order_id"])


def _by_webhook(app, client, gateway, tx_id):
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    return "success"


def _by_failed_webhook(app, client, gateway, tx_id):
    assert post_webhook(client, status_event(tx_id, "failure", 1999)).status_code == 200
    return "failure"


def _by_status_check(app, client, gateway, tx_id):
    set_age(app, tx_id, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "success")
    assert reconcile(app).changed == 1  # on a worker thread of the pass
    return "success"


def _by_expiry(app, client, gateway, tx_id):
    set_age(app, tx_id, EXPIRES_AFTER + 60)
    answer_expire(gateway, tx_id, 200)
    assert reconcile(app).expired == 1
    return "expired"


def _by_shopper_cancel(app, client, gateway, tx_id):
    gateway_expire(gateway, tx_id)
    with app.app_context():
        assert checkout.cancel_payment(tx_id).value == "cancelled"
    return "cancelled"


@pytest.mark.parametrize("change", [_by_webhook, _by_failed_webhook, _by_status_check, _by_expiry,
                                    _by_shopper_cancel],
                         ids=["webhook success", "webhook failure", "reconcile status check",
                              "reconcile expiry", "shopper cancel"])
def test_the_push_to_the_room_comes_after_the_change_is_committed(app, client, gateway, payment, emits, change):
    tx_id = payment["transaction_id"]
    new_status = change(app, client, gateway, tx_id)
    assert emits == [{"room": room_for(tx_id), "sent": new_status, "committed": new_status,
                      "transaction_id": tx_id}]


def test_a_success_followed_at_once_by_its_early_refund_pushes_both_changes(app, client, payment, emits):
    """The refund came first and was remembered; the success then moves twice, and each
    committed change is pushed, in order."""
    tx_id = payment["transaction_id"]
    assert post_webhook(client, status_event(tx_id, "refunded", 1999)).status_code == 200
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    assert [(e["sent"], e["committed"]) for e in emits] == [("success", "success"), ("refunded", "refunded")]


# -- a reconciliation pass's change reaches a browser in the room ------------------------------------


@pytest.fixture
def joined(app, client, payment):
    sio = socketio.test_client(app, flask_test_client=client)
    assert sio.is_connected()
    sio.emit("join", {"transaction_id": payment["transaction_id"]})
    assert [e["args"][0]["status"] for e in sio.get_received() if e["name"] == "payment_status_update"] == ["pending"]
    yield sio
    if sio.is_connected():
        sio.disconnect()


def _updates(sio) -> list[dict]:
    return [e["args"][0] for e in sio.get_received() if e["name"] == "payment_status_update"]


def test_a_change_made_by_payments_reconcile_reaches_the_joined_client(app, gateway, payment, joined, runner):
    tx_id = payment["transaction_id"]
    set_age(app, tx_id, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "success")
    result = runner.invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0, result.output
    assert _updates(joined) == [{"transaction_id": tx_id, "status": "success"}]


def test_an_expiry_made_by_a_reconciliation_pass_reaches_the_joined_client(app, gateway, payment, joined):
    tx_id = payment["transaction_id"]
    set_age(app, tx_id, EXPIRES_AFTER + 60)
    answer_expire(gateway, tx_id, 200)
    assert reconcile(app).expired == 1
    assert _updates(joined) == [{"transaction_id": tx_id, "status": "expired"}]
    with app.app_context():
        assert db.session.get(Transaction, tx_id).status == "expired"


@pytest.mark.parametrize(("amount", "status"), [(500, "partially_refunded"), (1999, "refunded")])
def test_a_refund_made_by_ops_is_pushed_to_the_room_after_commit(app, client, gateway, payment, emits, amount,
                                                                  status):
    """Refund moves are status changes too: the shopper's waiting page hears them."""
    tx_id = payment["transaction_id"]
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    emits.clear()
    gateway.add(responses.POST, f"{GATEWAY}/refunds", json={"refund_id": "re_1", "status": "succeeded"})
    with app.app_context():
        refunds.refund(tx_id, amount, actor="ops@example.test")
    assert emits == [{"room": room_for(tx_id), "sent": status, "committed": status, "transaction_id": tx_id}]


def test_the_return_check_s_change_is_pushed_after_commit(app, client, gateway, payment, emits, monkeypatch):
    """The waiting page asks the gateway when the shopper comes back, on a background task:
    what that check moves is pushed to the room too."""
    from app.payments import pages
    from tests.pages.support import gateway_status

    monkeypatch.setattr(pages, "RETURN_CHECK_WAIT_SECONDS", 30.0)  # the page waits for the check to end
    tx_id = payment["transaction_id"]
    gateway_status(gateway, tx_id, "success", 1999)
    assert client.get(f"/payment/{tx_id}?returned=1").status_code == 200
    assert emits == [{"room": room_for(tx_id), "sent": "success", "committed": "success", "transaction_id": tx_id}]
