"""End to end over real HTTP on loopback: the app and the built-in sandbox gateway.

Nothing of ours is mocked: the app calls the sandbox's API, the shopper's form goes to the
sandbox's hosted page, and the sandbox's worker delivers signed webhooks to the app.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from app.sandbox.server import serve_in_thread
from tests import fulfillment_probe
from tests.conftest import prepare_database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(make_app, database_url, tmp_path):
    port = _free_port()
    sandbox = serve_in_thread("127.0.0.1", 0, {
        "SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.db'}",
        "SANDBOX_DELIVERY_BACKOFF_FACTOR": 0.01,
        "SANDBOX_WORKER_POLL_SECONDS": 0.05,
    })
    app = make_app(PAYMENT_GATEWAY_URL=sandbox.url, PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
                   FULFILLMENT_HANDLER="tests.fulfillment_probe:record")
    prepare_database(app, database_url)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", sandbox
    server.shutdown()
    sandbox.stop()


def set_fault(sandbox, **knobs):
    from config import DEV_GATEWAY_API_KEY

    answer = requests.post(f"{sandbox.url}/_admin/faults", json={"scope": "global", **knobs},
                           headers={"Authorization": f"Bearer {DEV_GATEWAY_API_KEY}"}, timeout=5)
    assert answer.status_code == 200, answer.text


def pay_with_card(app_url: str, card: str) -> tuple[str, requests.Response]:
    """Place an order, start its payment, and submit the hosted form like a shopper."""
    shopper = requests.Session()
    order = shopper.post(f"{app_url}/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 1}]}).json()
    started = shopper.post(f"{app_url}/initiate-payment", json={"order_id": order["order_id"]})
    assert started.status_code == 201, started.text
    tx_id = started.json()["transaction_id"]
    page = shopper.get(started.json()["payment_url"])
    assert page.status_code == 200 and "Pay" in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    submitted = shopper.post(requests.compat.urljoin(page.url, action), allow_redirects=False, data={
        "csrf_token": token, "card_number": card, "expiry": "12/39", "cvc": "123", "name": "Ada Shopper"})
    return tx_id, submitted


def wait_for_status(app_url: str, tx_id: str, wanted: str, within: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if requests.get(f"{app_url}/check-payment-status/{tx_id}").json()["status"] == wanted:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{tx_id} did not become {wanted} within {within}s")


def wait_until_fulfilled(app_url: str, tx_id: str, within: float = 10.0) -> None:
    """The order becomes fulfilled only after its handler returned, a moment after the payment's
    success is visible (the contract commits the two in turn), so wait for that, not for time."""
    order_id = requests.get(f"{app_url}/check-payment-status/{tx_id}").json()["order_id"]
    deadline = time.monotonic() + within
    while requests.get(f"{app_url}/api/orders/{order_id}").json()["status"] != "fulfilled":
        assert time.monotonic() < deadline, f"order {order_id} was not fulfilled within {within}s"
        time.sleep(0.05)


def test_card_payment_succeeds_and_fulfills_once(live):
    app_url, sandbox = live
    tx_id, submitted = pay_with_card(app_url, "4242 4242 4242 4242")
    assert submitted.status_code == 303
    assert submitted.headers["Location"].startswith(f"{app_url}/payment/{tx_id}")
    wait_for_status(app_url, tx_id, "success")
    wait_until_fulfilled(app_url, tx_id)
    assert [c[1] for c in fulfillment_probe.calls] == [tx_id]


def test_duplicated_webhook_still_fulfills_once(live):
    app_url, sandbox = live
    set_fault(sandbox, duplicate_webhook=True)
    tx_id, _ = pay_with_card(app_url, "4242424242424242")
    wait_for_status(app_url, tx_id, "success")
    deadline = time.monotonic() + 10
    while True:
        listed = requests.get(f"{sandbox.url}/_admin/deliveries", params={"transaction_id": tx_id},
                              headers={"Authorization": "Bearer sk_sandbox_development_key"}).json()
        rows = listed["deliveries"] if isinstance(listed, dict) else listed
        delivered = [d for d in rows if d["event_status"] == "success" and d["delivered_at"]]
        if len(delivered) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(delivered) == 2 and delivered[0]["last_status_code"] == delivered[1]["last_status_code"] == 200
    assert [c[1] for c in fulfillment_probe.calls] == [tx_id]


def test_delayed_webhook_arrives_later(live):
    app_url, sandbox = live
    set_fault(sandbox, delay_webhook_seconds=2)
    tx_id, _ = pay_with_card(app_url, "4242424242424242")
    assert requests.get(f"{app_url}/check-payment-status/{tx_id}").json()["status"] == "pending"
    waited = wait_for_status(app_url, tx_id, "success", within=15)
    assert waited >= 1.0
    wait_until_fulfilled(app_url, tx_id)
    assert [c[1] for c in fulfillment_probe.calls] == [tx_id]


def test_declined_card_fails(live):
    app_url, _ = live
    tx_id, _ = pay_with_card(app_url, "4000 0000 0000 0002")
    wait_for_status(app_url, tx_id, "failure")
    assert fulfillment_probe.calls == []


def test_undecodable_socket_messages_are_dropped_in_one_line_each(live, caplog):
    url, _ = live
    opened = requests.get(f"{url}/socket.io/?EIO=4&transport=polling", timeout=5).text
    assert opened.startswith("0"), opened
    poll = f"{url}/socket.io/?EIO=4&transport=polling&sid={json.loads(opened[1:])['sid']}"
    assert requests.post(poll, data="40", timeout=5).text == "OK"
    assert requests.get(poll, timeout=5).text.startswith("40")
    bad = ['42["join",' + "9" * 5000 + "]", "42" + "[" * 5000 + "]" * 5000,
           '42["join",' + '{"a":' * 3000 + "1" + "}" * 3000 + "]", '42["join",{', '42{"join":1}', "42[]"]
    for packet in bad:
        assert requests.post(poll, data=packet, timeout=5).status_code == 200
    requests.post(poll, data='42["join",{"transaction_id":"txn_nobody"}]', timeout=5)
    assert "transaction_not_found" in requests.get(poll, timeout=5).text  # the socket still works
    dropped = [r for r in caplog.records if r.name.startswith(("engineio", "socketio"))]
    assert len(dropped) == len(bad), [r.getMessage() for r in dropped]
    assert all(r.exc_info is None and r.levelname == "WARNING" and "dropped a message" in r.getMessage()
               for r in dropped)
    assert "Traceback" not in caplog.text
