"""Webhook delivery over real HTTP: signature, retries, timeouts, restarts, the worker's lifecycle."""

from __future__ import annotations

import json
import threading
import time

import pytest
import standardwebhooks
from sqlalchemy import select, update

from app.sandbox.models import Delivery

from .support import WEBHOOK_SECRET, Shopper, wait_until


def verified(request: dict) -> dict:
    """The event, after the independent standardwebhooks package checked the signature."""
    return standardwebhooks.Webhook(WEBHOOK_SECRET).verify(request["body"], request["headers"])


def rows(app) -> list[Delivery]:
    with app.extensions["sandbox"].storage.session() as db:
        return list(db.scalars(select(Delivery).order_by(Delivery.id)))


@pytest.fixture
def live(make_app):
    """A sandbox with its delivery worker running."""
    return make_app(SANDBOX_DELIVERY_WORKER=True)


def test_webhook_body_and_signature_follow_the_contract(live, receiver):
    hook = receiver()
    shopper = Shopper(live.test_client())
    session_id = shopper.session_id("tx_1", callback_url=hook.url, amount=4200, currency="EUR")
    shopper.pay(session_id)
    (request,) = hook.wait_for(1)
    event = verified(request)
    assert event["type"] == "payment.status_changed"
    assert event["data"] == {
        "transaction_id": "tx_1", "session_id": session_id, "status": "success", "amount": 4200, "currency": "EUR",
    }
    assert event["timestamp"].endswith("+00:00")
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == event
    wait_until(lambda: rows(live)[0].state == "delivered")
    assert rows(live)[0].last_status_code == 200 and rows(live)[0].attempts == 1


def test_retries_until_the_receiver_accepts_with_the_same_webhook_id(live, receiver):
    hook = receiver([500, 503, 200])
    shopper = Shopper(live.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    requests = hook.wait_for(3)
    assert [r["answered"] for r in requests] == [500, 503, 200]
    assert len({r["headers"]["Webhook-Id"] for r in requests}) == 1
    assert len({r["body"] for r in requests}) == 1
    for request in requests:
        assert verified(request)["data"]["status"] == "success"
    stamps = [int(r["headers"]["Webhook-Timestamp"]) for r in requests]
    assert stamps == sorted(stamps)
    wait_until(lambda: rows(live)[0].state == "delivered")
    row = rows(live)[0]
    assert row.attempts == 3 and row.delivered_at is not None and row.last_status_code == 200


def test_each_attempt_is_signed_with_a_fresh_timestamp(app, runtime, receiver):
    hook = receiver([500, 200])
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    runtime.tick()
    time.sleep(1.05)  # whole-second timestamps: the second attempt must carry a later one
    runtime.tick()
    first, second = hook.wait_for(2)
    assert first["headers"]["Webhook-Id"] == second["headers"]["Webhook-Id"]
    assert int(second["headers"]["Webhook-Timestamp"]) > int(first["headers"]["Webhook-Timestamp"])
    assert first["headers"]["Webhook-Signature"] != second["headers"]["Webhook-Signature"]
    verified(first), verified(second)


def test_a_timeout_counts_as_a_failed_attempt(make_app, receiver):
    app = make_app(SANDBOX_DELIVERY_WORKER=True, SANDBOX_DELIVERY_TIMEOUT=0.2)
    hook = receiver([("sleep", 0.5), 200])
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    wait_until(lambda: rows(app)[0].state == "delivered")
    row = rows(app)[0]
    assert row.attempts == 2
    ids = {r["headers"]["Webhook-Id"] for r in hook.wait_for(2)}
    assert ids == {row.webhook_id}


def test_attempts_are_bounded(make_app, receiver):
    app = make_app(SANDBOX_DELIVERY_WORKER=True, SANDBOX_DELIVERY_MAX_ATTEMPTS=3)
    hook = receiver([500] * 10)
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    wait_until(lambda: rows(app)[0].state == "failed")
    assert rows(app)[0].attempts == 3 and rows(app)[0].next_attempt_at is None
    time.sleep(0.2)
    assert len(hook.requests) == 3


def test_unreachable_receiver_is_retried_later(app, runtime):
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url="http://127.0.0.1:9/nobody"))
    runtime.tick()
    row = rows(app)[0]
    assert row.state == "queued" and row.attempts == 1 and row.last_status_code is None
    assert "Connection" in row.last_answer and row.next_attempt_at > row.last_attempt_at


def test_pending_deliveries_survive_a_restart(make_app, receiver):
    hook = receiver()
    first = make_app()  # worker off: the delivery stays queued
    Shopper(first.test_client()).pay(Shopper(first.test_client()).session_id("tx_1", callback_url=hook.url))
    assert [r.state for r in rows(first)] == ["queued"]
    first.extensions["sandbox"].close()
    assert hook.requests == []

    second = make_app(SANDBOX_DELIVERY_WORKER=True)  # same SQLite file
    (request,) = hook.wait_for(1)
    assert verified(request)["data"]["transaction_id"] == "tx_1"
    wait_until(lambda: rows(second)[0].state == "delivered")


def test_the_worker_never_runs_twice_for_one_storage(live, make_app):
    runtime = live.extensions["sandbox"]
    assert runtime.worker.running
    assert runtime.start_worker() is True  # idempotent
    other = make_app(SANDBOX_DELIVERY_WORKER=True).extensions["sandbox"]
    assert not other.worker.running
    runtime.stop()
    assert not runtime.worker.running
    assert other.start_worker() and other.worker.running


def test_stop_leaves_queued_deliveries_in_storage(live):
    runtime = live.extensions["sandbox"]
    worker_threads = [t for t in threading.enumerate() if t.name == "sandbox-delivery"]
    assert len(worker_threads) == 1
    runtime.stop()
    # stop() returns once the thread has ended: nothing can send the webhook queued below.
    assert not worker_threads[0].is_alive() and not runtime.worker.running
    shopper = Shopper(live.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url="http://127.0.0.1:9/x"))
    assert shopper.status("tx_1") == "success"
    [queued] = rows(live)
    assert (queued.event_status, queued.state, queued.attempts) == ("success", "queued", 0)
    # Kept for the next worker: started again, it picks the delivery up (port 9 refuses it).
    assert runtime.start_worker()
    wait_until(lambda: rows(live)[0].attempts >= 1)


def test_a_delivery_without_a_2xx_is_retried_with_growing_delays(make_app, receiver):
    """Contract 4: the gateway retries a delivery that did not get a 2xx, *with backoff*: each
    failed attempt waits longer than the one before, and nothing is sent before it is due."""
    app = make_app(SANDBOX_DELIVERY_BACKOFF_FACTOR=1.0)  # the real schedule; the worker is off
    hook = receiver([500, 302, 503, 200])
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    sandbox = app.extensions["sandbox"]
    waits = []
    for attempts in range(1, 4):
        with sandbox.storage.session() as db:  # test data setup: the next attempt is due now
            db.execute(update(Delivery).values(next_attempt_at=Delivery.created_at))
            db.commit()
        assert sandbox.tick() == 1
        row = rows(app)[0]
        assert (row.state, row.attempts) == ("queued", attempts)
        waits.append((row.next_attempt_at - row.last_attempt_at).total_seconds())
        assert sandbox.tick() == 0  # not due yet: no attempt before the wait is over
    assert [r["answered"] for r in hook.requests] == [500, 302, 503]
    assert 1 <= waits[0] < waits[1] < waits[2], waits
