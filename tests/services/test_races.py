"""Exactly-once under races: many webhooks, polls and status moves at once."""

import threading
import uuid

from sqlalchemy import func, select

from app.domain.status import Status
from app.extensions import db
from app.models import TransactionEvent, WebhookEvent
from app.services.status_moves import apply_status
from tests import fulfillment_probe
from tests.conftest import place_order, sign, start_payment, status_event


def test_twenty_threads_of_success_webhooks_fulfill_once(app, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    event = status_event(tx_id, "success", 1999)
    shared_id = f"msg_{uuid.uuid4().hex}"
    # Half the deliveries repeat one webhook-id (gateway retries), half are distinct events.
    deliveries = [sign(event, msg_id=shared_id if i % 2 else None) for i in range(24)]
    barrier = threading.Barrier(len(deliveries) + 2)
    answers, statuses, errors = [], [], []

    def deliver(raw, headers):
        c = app.test_client()
        barrier.wait()
        try:
            answers.append(c.post("/payment-callback", data=raw, headers=headers).status_code)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def poll():
        c = app.test_client()
        barrier.wait()
        for _ in range(10):
            statuses.append(c.get(f"/check-payment-status/{tx_id}").get_json()["status"])

    def ops_move():
        barrier.wait()
        with app.app_context():
            apply_status(tx_id, Status.SUCCESS, source="poller")

    threads = [threading.Thread(target=deliver, args=d) for d in deliveries]
    threads += [threading.Thread(target=poll), threading.Thread(target=ops_move)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert answers == [200] * len(deliveries)
    assert set(statuses) <= {"pending", "success"}
    assert fulfillment_probe.calls == [(order["order_id"], tx_id)]
    with app.app_context():
        applied = db.session.scalar(select(func.count()).select_from(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "status",
            TransactionEvent.outcome == "applied"))
        assert applied == 1
        # 12 distinct events plus the one shared id
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 13
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "fulfilled"


def test_racing_success_and_failure_end_in_one_consistent_state(app, client, gateway):
    for _ in range(3):
        order = place_order(client)
        tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
        barrier = threading.Barrier(10)

        def move(target):
            barrier.wait()
            with app.app_context():
                apply_status(tx_id, target, source="webhook")

        targets = [Status.SUCCESS, Status.FAILURE, Status.EXPIRED, Status.CANCELLED, Status.SUCCESS] * 2
        threads = [threading.Thread(target=move, args=(t,)) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Whatever won first, a success is never dropped: it ends in success, fulfilled once.
        assert client.get(f"/check-payment-status/{tx_id}").get_json()["status"] == "success"
    assert len(fulfillment_probe.calls) == 3


def test_join_never_misses_a_change_committed_while_joining(app, client, gateway, monkeypatch):
    """A webhook committed between the join handler's steps still reaches the joining page."""
    import app.realtime as realtime
    from app.extensions import socketio
    from tests.conftest import post_webhook

    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    real_join = realtime.join_room

    def join_while_a_webhook_lands(room, *args, **kwargs):
        worker = threading.Thread(target=lambda: post_webhook(app.test_client(), status_event(tx_id, "success", 1999)))
        worker.start()
        worker.join()
        return real_join(room, *args, **kwargs)

    monkeypatch.setattr(realtime, "join_room", join_while_a_webhook_lands)
    socket = socketio.test_client(app)
    socket.emit("join", {"transaction_id": tx_id})
    statuses = [m["args"][0]["status"] for m in socket.get_received() if m["name"] == "payment_status_update"]
    assert statuses and statuses[-1] == "success"
