"""Every fault knob, set through the admin endpoint or the settings."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import standardwebhooks
from sqlalchemy import select

from app.sandbox import delivery
from app.sandbox.models import Delivery, utcnow

from .support import ADMIN, API_KEY, AUTH, WEBHOOK_SECRET, Shopper, wait_until


def set_faults(client, **knobs):
    answer = client.post("/_admin/faults", json=knobs, headers=ADMIN)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def statuses(requests) -> list[str]:
    hook = standardwebhooks.Webhook(WEBHOOK_SECRET)
    return [hook.verify(r["body"], r["headers"])["data"]["status"] for r in requests]


def states(app) -> list[tuple[str, str]]:
    with app.extensions["sandbox"].storage.session() as db:
        return [(d.event_status, d.state) for d in db.scalars(select(Delivery).order_by(Delivery.id))]


def deliveries(runtime) -> list[Delivery]:
    with runtime.storage.session() as db:
        return list(db.scalars(select(Delivery).order_by(Delivery.id)))


@pytest.fixture
def live(make_app):
    return make_app(SANDBOX_DELIVERY_WORKER=True)


@pytest.fixture
def live_shopper(live):
    return Shopper(live.test_client())


# --- the admin endpoint -------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, AUTH, {"Authorization": "Bearer nope"}])
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_admin_endpoint_needs_the_admin_key(client, headers, method):
    answer = getattr(client, method)("/_admin/faults", json={"drop_webhook": True}, headers=headers)
    assert answer.status_code == 401 and answer.get_json()["error"] == "unauthorized"


def test_admin_key_defaults_to_the_api_key(make_app, settings):
    app = make_app(SANDBOX_ADMIN_KEY=None)
    answer = app.test_client().get("/_admin/faults", headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200


def test_set_read_and_clear_knobs(client):
    assert set_faults(client, drop_webhook=True) == {"scope": "global", "faults": {"drop_webhook": True}}
    assert set_faults(client, scope="tx_9", latency_ms=5)["faults"] == {"latency_ms": 5}
    assert set_faults(client, scope="tx_9", out_of_order=True)["faults"] == {"latency_ms": 5, "out_of_order": True}
    assert client.get("/_admin/faults", headers=ADMIN).get_json() == {
        "global": {"drop_webhook": True}, "sessions": {"tx_9": {"latency_ms": 5, "out_of_order": True}},
    }
    left = client.delete("/_admin/faults?scope=tx_9", headers=ADMIN).get_json()
    assert left == {"global": {"drop_webhook": True}, "sessions": {}}
    assert client.delete("/_admin/faults", headers=ADMIN).get_json() == {"global": {}, "sessions": {}}


@pytest.mark.parametrize(
    "knobs",
    [{"explode": True}, {"drop_webhook": "yes"}, {"latency_ms": -1}, {"latency_ms": 1.5},
     {"fail_create_session_mode": "crash"}, {"fail_create_session_status": 404}, {"scope": ""},
     {"delay_webhook_seconds": "5"}],
)
def test_bad_knobs_are_refused(client, knobs):
    answer = client.post("/_admin/faults", json=knobs, headers=ADMIN)
    assert answer.status_code == 422 and answer.get_json()["error"] == "invalid_fault"
    assert client.get("/_admin/faults", headers=ADMIN).get_json()["global"] == {}


def test_non_object_fault_body_is_400(client):
    answer = client.post("/_admin/faults", data="[]", content_type="application/json", headers=ADMIN)
    assert answer.status_code == 400


# --- webhook knobs ------------------------------------------------------------------------

def test_drop_webhook(live, live_shopper, receiver):
    hook = receiver()
    set_faults(live_shopper.client, drop_webhook=True)
    live_shopper.pay(live_shopper.session_id("tx_1", callback_url=hook.url))
    assert live_shopper.status("tx_1") == "success"
    time.sleep(0.3)
    assert hook.requests == [] and states(live) == [("success", "dropped")]


def test_deliver_twice(live, live_shopper, receiver):
    hook = receiver()
    set_faults(live_shopper.client, duplicate_webhook=True)
    live_shopper.pay(live_shopper.session_id("tx_1", callback_url=hook.url))
    first, second = hook.wait_for(2)
    assert first["headers"]["Webhook-Id"] == second["headers"]["Webhook-Id"]
    assert first["body"] == second["body"] and statuses([first, second]) == ["success", "success"]


def test_delay_webhook(runtime, shopper, receiver):
    """The delayed webhook is stored with its not-before time, is not sent before it, then is sent."""
    hook = receiver()
    set_faults(shopper.client, delay_webhook_seconds=0.5)
    started = time.monotonic()  # taken first: no later than ``before`` on the wall clock
    before = utcnow()
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    after = utcnow()
    (queued,) = deliveries(runtime)
    assert (queued.event_status, queued.state, queued.attempts) == ("success", "queued", 0)
    assert queued.note == "delayed 0.5s by fault knob"
    not_before = queued.next_attempt_at
    assert before + timedelta(seconds=0.5) <= not_before <= after + timedelta(seconds=0.5)
    # A pass just before that moment sends nothing (the worker is off: the test says when "now" is).
    assert delivery.deliver_due(runtime, now=not_before - timedelta(milliseconds=1)) == 0
    assert hook.requests == [] and [(d.state, d.attempts) for d in deliveries(runtime)] == [("queued", 0)]
    # The worker, started now, sends it once it is due: once, and not before its time.
    assert runtime.start_worker()
    (request,) = hook.wait_for(1)
    assert statuses([request]) == ["success"]
    assert request["at"] - started >= 0.5
    wait_until(lambda: deliveries(runtime)[0].state == "delivered")  # written once the receiver answered
    (sent,) = deliveries(runtime)
    assert sent.attempts == 1 and sent.delivered_at >= not_before
    assert len(hook.requests) == 1


def test_out_of_order_stale_failure_after_success(live, live_shopper, receiver):
    hook = receiver()
    set_faults(live_shopper.client, out_of_order=True)
    live_shopper.pay(live_shopper.session_id("tx_1", callback_url=hook.url))
    requests = hook.wait_for(2)
    assert statuses(requests) == ["success", "failure"]
    assert requests[0]["headers"]["Webhook-Id"] != requests[1]["headers"]["Webhook-Id"]
    assert live_shopper.status("tx_1") == "success"


def test_out_of_order_pending_after_success_for_0077(live, live_shopper, receiver):
    hook = receiver()
    set_faults(live_shopper.client, out_of_order=True)
    live_shopper.pay(live_shopper.session_id("tx_1", callback_url=hook.url), "4000 0000 0000 0077")
    requests = hook.wait_for(2)
    assert statuses(requests) == ["success", "pending"]
    webhook = standardwebhooks.Webhook(WEBHOOK_SECRET)
    success, stale = (webhook.verify(r["body"], r["headers"]) for r in requests)
    assert stale["timestamp"] < success["timestamp"]


def test_out_of_order_pending_after_confirmation_for_3220(live, live_shopper, receiver):
    hook = receiver()
    set_faults(live_shopper.client, out_of_order=True)
    session_id = live_shopper.session_id("tx_1", callback_url=hook.url)
    live_shopper.pay(session_id, "4000 0000 0000 3220")
    live_shopper.confirm(session_id, "complete")
    assert statuses(hook.wait_for(2)) == ["success", "pending"]


def test_webhook_knobs_per_session_leave_others_alone(live, live_shopper, receiver):
    hook = receiver()
    set_faults(live_shopper.client, scope="tx_1", drop_webhook=True)
    set_faults(live_shopper.client, scope=live_shopper.session_id("tx_2", callback_url=hook.url),
               duplicate_webhook=True)
    live_shopper.pay(live_shopper.session_id("tx_1", callback_url=hook.url))
    live_shopper.pay(live_shopper.client.get("/status/tx_2", headers=AUTH).get_json()["session_id"])
    live_shopper.pay(live_shopper.session_id("tx_3", callback_url=hook.url))
    requests = hook.wait_for(3)
    time.sleep(0.2)
    hook_ = standardwebhooks.Webhook(WEBHOOK_SECRET)
    seen = sorted(hook_.verify(r["body"], r["headers"])["data"]["transaction_id"] for r in hook.requests)
    assert seen == ["tx_2", "tx_2", "tx_3"] and len(requests) == 3


def test_knobs_from_settings(make_app, receiver):
    hook = receiver()
    app = make_app(SANDBOX_DELIVERY_WORKER=True, SANDBOX_FAULTS={"global": {"duplicate_webhook": True}})
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url=hook.url))
    assert statuses(hook.wait_for(2)) == ["success", "success"]


# --- create-session and latency knobs -----------------------------------------------------

def test_fail_next_create_session_calls_with_5xx(shopper):
    set_faults(shopper.client, fail_create_session=2, fail_create_session_status=502)
    for _ in range(2):
        answer = shopper.create("tx_1")
        assert answer.status_code == 502 and answer.get_json()["error"] == "service_unavailable"
    assert shopper.create("tx_1").status_code == 200
    assert shopper.client.get("/_admin/faults", headers=ADMIN).get_json()["global"]["fail_create_session"] == 0


def test_fail_create_session_for_one_transaction(shopper):
    set_faults(shopper.client, scope="tx_1", fail_create_session=1)
    assert shopper.create("tx_2").status_code == 200
    assert shopper.create("tx_1").status_code == 503
    assert shopper.create("tx_1").status_code == 200


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Every time.sleep the sandbox makes in the test's own thread, which serves the test client's
    requests (it still sleeps). Threads other tests left behind (an abandoned gateway call
    backing off) sleep too, and are not counted."""
    calls: list[float] = []
    real, mine = time.sleep, threading.get_ident()

    def sleep(seconds):
        if threading.get_ident() == mine:
            calls.append(seconds)
        real(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return calls


def test_fail_create_session_with_a_timeout(shopper, sleeps):
    set_faults(shopper.client, fail_create_session=1, fail_create_session_mode="timeout",
               create_session_timeout_seconds=0.4)
    late = shopper.create("tx_1")
    assert sleeps == [0.4]
    # The answer was late, not lost: a retry under the same key finds the same session at once.
    retry = shopper.create("tx_1")
    assert sleeps == [0.4]
    assert retry.get_json() == late.get_json()


@pytest.mark.parametrize("scope", ["global", "tx_1"])
def test_latency_on_every_answer(shopper, scope, sleeps):
    session_id = shopper.session_id("tx_1")
    shopper.session_id("tx_2")
    set_faults(shopper.client, scope=scope, latency_ms=300)
    for path in ("/status/tx_1", f"/pay/{session_id}"):
        del sleeps[:]
        shopper.client.get(path, headers=AUTH)
        assert sleeps == [0.3]
    del sleeps[:]
    shopper.client.get("/status/tx_2", headers=AUTH)
    assert sleeps == ([0.3] if scope == "global" else [])
