"""Idempotency-Key under concurrency: every copy of a request gets the first answer."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import responses

from app.extensions import db
from app.models import IdempotencyRecord
from app.models.clock import utcnow
from app.services import idempotency
from tests.conftest import GATEWAY, place_order, prepare_database


def slow_sessions(mock, delay: float) -> list[str]:
    """create-session answering after ``delay``; returns the keys it was called with."""
    calls = []

    def create(request):
        calls.append(request.headers["Idempotency-Key"])
        time.sleep(delay)
        key = request.headers["Idempotency-Key"]
        return 200, {}, json.dumps({"session_id": f"cs_{key}", "payment_url": f"{GATEWAY}/pay/cs_{key}"})

    mock.add_callback(responses.POST, f"{GATEWAY}/create-session", callback=create)
    return calls


def test_copies_sent_at_once_all_get_the_first_answer(app, client, gateway):
    order = place_order(client)
    calls = slow_sessions(gateway, 0.3)  # the copies arrive while the first is at the gateway
    barrier = threading.Barrier(6)
    answers = []

    def send():
        own = app.test_client()
        barrier.wait()
        response = own.post("/initiate-payment", json={"order_id": order["order_id"]},
                            headers={"Idempotency-Key": "same-key"})
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 6 and answers[0][0] == 201
    assert all(answer == answers[0] for answer in answers)  # the same status and the same JSON
    assert len(calls) == 1


def test_a_copy_waits_only_so_long_for_the_first_answer(make_app, database_url, gateway):
    app = make_app(IDEMPOTENCY_WAIT_SECONDS=0.2)
    prepare_database(app, database_url)
    client = app.test_client()
    order = place_order(client)
    with app.app_context():  # a first request, still being answered
        db.session.add(IdempotencyRecord(key="busy-key", scope="initiate-payment", created_at=utcnow(),
                                         fingerprint=idempotency.fingerprint({"order_id": order["order_id"]})))
        db.session.commit()
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]},
                           headers={"Idempotency-Key": "busy-key"})
    assert response.status_code == 409 and response.get_json()["error"] == "idempotency_request_in_progress"


def test_a_claim_taken_over_stores_nothing_when_its_request_finally_answers(app, client, gateway):
    """A first request that outlived ABANDONED_AFTER was taken over: its late answer must not
    replace the answer the key already gave."""
    order = place_order(client)
    slow_sessions(gateway, 0)
    body = {"order_id": order["order_id"]}
    old = idempotency.Claim("old-key", utcnow() - idempotency.ABANDONED_AFTER - timedelta(seconds=1))
    with app.app_context():
        db.session.add(IdempotencyRecord(key="old-key", scope="initiate-payment", created_at=old.claimed_at,
                                         fingerprint=idempotency.fingerprint(body)))
        db.session.commit()
    first = client.post("/initiate-payment", json=body, headers={"Idempotency-Key": "old-key"})
    assert first.status_code == 201
    with app.app_context():
        idempotency.finish(old, 502, {"error": "gateway_unavailable"})  # the abandoned request, at last
    again = client.post("/initiate-payment", json=body, headers={"Idempotency-Key": "old-key"})
    assert (again.status_code, again.get_json()) == (201, first.get_json())


def test_another_body_under_a_key_in_progress_is_refused_at_once(make_app, database_url, gateway):
    app = make_app(IDEMPOTENCY_WAIT_SECONDS=30)
    prepare_database(app, database_url)
    client = app.test_client()
    order = place_order(client)
    with app.app_context():  # a first request, still being answered, with another body
        db.session.add(IdempotencyRecord(key="busy-key", scope="initiate-payment", created_at=utcnow(),
                                         fingerprint=idempotency.fingerprint({"order_id": "ord_other"})))
        db.session.commit()
    pauses = []
    real_sleep = time.sleep
    time.sleep = lambda seconds: pauses.append(seconds) or real_sleep(0)
    try:
        response = client.post("/initiate-payment", json={"order_id": order["order_id"]},
                               headers={"Idempotency-Key": "busy-key"})
    finally:
        time.sleep = real_sleep
    assert response.status_code == 422 and response.get_json()["error"] == "idempotency_key_reused"
    assert pauses == []  # refused without waiting for the other request
