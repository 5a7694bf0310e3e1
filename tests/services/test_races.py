"""Exactly-once under races: many webhooks, polls and status moves at once."""

import threading
import uuid

import pytest

from sqlalchemy import func, select

from app.domain.status import Outcome, Status
from app.extensions import db
from app.models import Transaction, TransactionEvent, WebhookEvent
from app.services.status_moves import apply_status
from tests import fulfillment_probe
from tests.conftest import open_sessions, place_order, sign, start_payment, status_event


def run_together(calls) -> list:
    """Run each ``(function, *args)`` in its own thread; return their results in order.

    Every exception raised in any thread is collected and fails the test, as does a thread
    still running after the join.
    """
    results, errors = [None] * len(calls), []

    def run(index, function, args):
        try:
            results[index] = function(*args)
        except BaseException as exc:  # reported below, with the thread's call
            errors.append((function.__name__, args, exc))

    threads = [threading.Thread(target=run, args=(i, call[0], call[1:])) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()], "threads still running after 60 s"
    assert errors == []
    return results


def test_twenty_threads_of_success_webhooks_fulfill_once(app, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    event = status_event(tx_id, "success", 1999)
    shared_id = f"msg_{uuid.uuid4().hex}"
    # Half the deliveries repeat one webhook-id (gateway retries), half are distinct events.
    deliveries = [sign(event, msg_id=shared_id if i % 2 else None) for i in range(24)]
    barrier = threading.Barrier(len(deliveries) + 2, timeout=30)

    def deliver(raw, headers):
        c = app.test_client()
        barrier.wait()
        return c.post("/payment-callback", data=raw, headers=headers).status_code

    def poll():
        c = app.test_client()
        barrier.wait()
        return [c.get(f"/check-payment-status/{tx_id}").get_json()["status"] for _ in range(10)]

    def ops_move():
        barrier.wait()
        with app.app_context():
            return apply_status(tx_id, Status.SUCCESS, source="poller")

    *answers, statuses, moved = run_together([(deliver, *d) for d in deliveries] + [(poll,), (ops_move,)])
    assert answers == [200] * len(deliveries)
    assert len(statuses) == 10 and set(statuses) <= {"pending", "success"}
    # One poller asks one after another: once it has seen success it never sees pending again.
    assert statuses == sorted(statuses, key=["pending", "success"].index)
    assert moved.transaction_id == tx_id and moved.decision.outcome in (Outcome.APPLIED, Outcome.NOOP)
    assert fulfillment_probe.calls == [(order["order_id"], tx_id)]
    with app.app_context():
        applied = db.session.scalar(select(func.count()).select_from(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "status",
            TransactionEvent.outcome == "applied"))
        assert applied == 1
        # 12 distinct events plus the one shared id
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 13
    assert client.get(f"/check-payment-status/{tx_id}").get_json()["status"] == "success"
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "fulfilled"


def test_racing_success_and_failure_end_in_one_consistent_state(app, client, gateway):
    paid = []
    for _ in range(3):
        order = place_order(client)
        tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
        paid.append((order["order_id"], tx_id))
        barrier = threading.Barrier(10, timeout=30)

        def move(target):
            barrier.wait()
            with app.app_context():
                return apply_status(tx_id, target, source="webhook")

        targets = [Status.SUCCESS, Status.FAILURE, Status.EXPIRED, Status.CANCELLED, Status.SUCCESS] * 2
        results = run_together([(move, t) for t in targets])
        assert [r.transaction_id for r in results] == [tx_id] * len(targets)
        # Whatever won first, a success is never dropped: it ends in success, fulfilled once.
        assert any(r.applied and r.decision.target == Status.SUCCESS for r in results)
        assert client.get(f"/check-payment-status/{tx_id}").get_json()["status"] == "success"
    assert fulfillment_probe.calls == paid


def test_join_never_misses_a_change_committed_while_joining(app, client, gateway, monkeypatch):
    """A webhook committed between the join handler's steps still reaches the joining page."""
    import app.realtime as realtime
    from app.extensions import socketio
    from tests.conftest import post_webhook

    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    real_join = realtime.join_if_connected

    def join_while_a_webhook_lands(room, *args, **kwargs):
        worker = threading.Thread(target=lambda: post_webhook(app.test_client(), status_event(tx_id, "success", 1999)))
        worker.start()
        worker.join()
        return real_join(room, *args, **kwargs)

    monkeypatch.setattr(realtime, "join_if_connected", join_while_a_webhook_lands)
    socket = socketio.test_client(app)
    socket.emit("join", {"transaction_id": tx_id})
    statuses = [m["args"][0]["status"] for m in socket.get_received() if m["name"] == "payment_status_update"]
    assert statuses and statuses[-1] == "success"


def test_a_refund_and_the_success_delivered_at_once_always_end_refunded(app, client, gateway):
    """The gateway's refund and success deliveries for one payment race (out of order, at
    once): whichever takes the row first, the books end refunded in full, nothing is left
    remembered, and the handler runs at most once (only when the success truly came first)."""
    with app.app_context():
        if db.engine.url.get_backend_name() != "postgresql":
            pytest.skip("two writers interleaving on one row: PostgreSQL only (SQLite serialises them)")
    for _ in range(6):
        order = place_order(client)
        tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
        deliveries = [sign(status_event(tx_id, status, 1999)) for status in ("refunded", "success")]
        barrier = threading.Barrier(len(deliveries), timeout=30)

        def deliver(raw, headers):
            c = app.test_client()
            barrier.wait()
            return c.post("/payment-callback", data=raw, headers=headers).status_code

        assert run_together([(deliver, *d) for d in deliveries]) == [200, 200]
        with app.app_context():
            tx = db.session.get(Transaction, tx_id)
            assert (tx.status, tx.refunded_amount, tx.refund_reported) == ("refunded", 1999, None)
        shipped = fulfillment_probe.calls.count((order["order_id"], tx_id))
        assert shipped <= 1
        assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == (
            "fulfilled" if shipped else "paid")


def test_initiations_for_one_order_at_once_open_one_payment(app, client, gateway):
    """Eight tabs initiate one order's payment at once: the order's lock makes the first start
    the payment and the others hand out that same one (one row, one 'started' line)."""
    open_sessions(gateway)
    order_id = place_order(client)["order_id"]
    barrier = threading.Barrier(8, timeout=30)

    def initiate():
        c = app.test_client()
        barrier.wait()
        response = c.post("/initiate-payment", json={"order_id": order_id})
        return response.status_code, response.get_json()["transaction_id"]

    answers = run_together([(initiate,)] * 8)
    assert len({tx_id for _, tx_id in answers}) == 1
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Transaction)
                                 .where(Transaction.order_id == order_id)) == 1
        assert db.session.scalar(select(func.count()).select_from(TransactionEvent)
                                 .where(TransactionEvent.kind == "created")) == 1
