"""The payment pages: Pay, the waiting page and its screens, Cancel, the return check, the lookup."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from app.extensions import db, limiter
from app.models import Order, Transaction
from app.payments import pages
from tests import fulfillment_probe
from tests.conftest import GATEWAY, open_sessions, post_webhook, status_event

from .support import calls_to, csrf_token, gateway_expire, gateway_status, order_through_pages, pay_through_pages


@pytest.fixture
def order_id(client):
    return order_through_pages(client)


def _page(client, tx_id: str, query: str = "") -> str:
    response = client.get(f"/payment/{tx_id}{query}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _visible_screen(html: str) -> list[str]:
    """The data-screen sections rendered without the hidden attribute."""
    import re

    return [m.group(1) for m in re.finditer(r'data-screen="(\w+)"(\s+hidden)?', html) if not m.group(2)]


def _status(app, tx_id: str) -> str:
    with app.app_context():
        return db.session.get(Transaction, tx_id).status


# -- Pay -----------------------------------------------------------------------------------

def test_pay_redirects_to_the_gateway_and_reuses_the_pending_payment(client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    again = pay_through_pages(client, gateway, order_id)
    assert again == tx_id
    assert calls_to(gateway, "/create-session") == 1


def test_pay_answers_json_to_the_page_script(client, gateway, order_id):
    open_sessions(gateway)
    response = client.post(f"/checkout/{order_id}/pay", data={"csrf_token": csrf_token(client, f"/checkout/{order_id}")},
                           headers={"Accept": "application/json"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["payment_url"] == f"{GATEWAY}/pay/cs_{body['transaction_id']}"
    assert body["page_url"] == f"/payment/{body['transaction_id']}"


def test_pay_without_csrf_token_is_refused(client, gateway, order_id):
    open_sessions(gateway)
    assert client.post(f"/checkout/{order_id}/pay").status_code == 400
    json_refusal = client.post(f"/checkout/{order_id}/pay", headers={"Accept": "application/json"})
    assert json_refusal.status_code == 400 and json_refusal.get_json()["error"] == "csrf_failed"
    assert calls_to(gateway, "/create-session") == 0


def test_pay_for_a_paid_order_goes_back_to_the_order(client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    post_webhook(client, status_event(tx_id, "success", 1999))
    response = client.post(f"/checkout/{order_id}/pay", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303 and response.headers["Location"] == f"/checkout/{order_id}"
    html = client.get(f"/checkout/{order_id}").get_data(as_text=True)
    assert "This order is already paid." in html and "This order is paid." in html
    assert f'href="/payment/{tx_id}"' in html and "/pay\"" not in html


def test_pay_with_the_gateway_down_says_so_on_the_order(client, gateway, order_id):
    gateway.add("POST", f"{GATEWAY}/create-session", body=requests.ConnectionError("down"))
    response = client.post(f"/checkout/{order_id}/pay", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303 and response.headers["Location"] == f"/checkout/{order_id}"
    assert "payment gateway is not answering" in client.get(f"/checkout/{order_id}").get_data(as_text=True)
    as_json = client.post(f"/checkout/{order_id}/pay", data={"csrf_token": csrf_token(client)},
                          headers={"Accept": "application/json"})
    assert as_json.status_code == 502 and as_json.get_json()["error"] == "gateway_unavailable"


def test_pay_for_an_unknown_order_is_404(client):
    response = client.post("/checkout/ord_missing/pay", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 404


# -- the waiting page ----------------------------------------------------------------------

def test_waiting_page_while_pending(client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    html = _page(client, tx_id)
    assert _visible_screen(html) == ["pending"]
    assert f'data-transaction-id="{tx_id}"' in html and 'data-status="pending"' in html
    assert f'data-status-url="/check-payment-status/{tx_id}"' in html
    assert 'role="status" aria-live="polite"' in html and 'id="back-guard"' in html
    assert "vendor/socket.io.min.js" in html and "js/payment.js" in html
    assert f'action="/payment/{tx_id}/cancel"' in html
    assert f'http-equiv="refresh" content="5;url=/payment/{tx_id}"' in html  # no JavaScript: reload instead
    assert "19.99 USD" in html and order_id in html


@pytest.mark.parametrize("status, screen, says", [
    ("success", "success", "Payment received"),
    ("failure", "failure", "Try again"),
    ("expired", "expired", "Start a new payment"),
    ("cancelled", "cancelled", "Pay again"),
])
def test_waiting_page_final_screens(client, gateway, order_id, status, screen, says):
    tx_id = pay_through_pages(client, gateway, order_id)
    post_webhook(client, status_event(tx_id, status, 1999))
    html = _page(client, tx_id)
    assert _visible_screen(html) == [screen]
    assert says in html and "http-equiv" not in html
    if screen != "success":
        assert f'action="/checkout/{order_id}/pay"' in html  # a new payment for the same order


def test_success_screen_shows_the_access_code_only_to_the_shopper(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    post_webhook(client, status_event(tx_id, "success", 1999))
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    assert f"{code[:5]}-{code[5:]}" in _page(client, tx_id)
    assert code[:5] not in _page(app.test_client(), tx_id)


def test_unknown_transaction_page_is_404(client):
    response = client.get("/payment/txn_missing")
    assert response.status_code == 404 and "Page not found" in response.get_data(as_text=True)


# -- the return from the gateway -----------------------------------------------------------

@pytest.fixture
def patient_return_check(monkeypatch):
    """The page waits for its return check as long as it takes (the mocked gateway answers at
    once, so nothing slows down): what it shows never depends on how fast a loaded machine runs
    the check within the production 2 s window."""
    monkeypatch.setattr(pages, "RETURN_CHECK_WAIT_SECONDS", 30.0)


@pytest.mark.usefixtures("patient_return_check")
def test_return_asks_the_gateway_once_and_shows_the_result(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway_status(gateway, tx_id, "success", 1999)
    assert _visible_screen(_page(client, tx_id, "?returned=1")) == ["success"]
    assert _status(app, tx_id) == "success"
    assert fulfillment_probe.calls == [(order_id, tx_id)]
    _page(client, tx_id, "?returned=1")  # final now: the gateway is not asked again
    assert calls_to(gateway, f"/status/{tx_id}") == 1


@pytest.mark.usefixtures("patient_return_check")
def test_return_check_is_rate_limited_per_transaction(client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway_status(gateway, tx_id, "pending", 1999)
    for _ in range(4):
        assert _visible_screen(_page(client, tx_id, "?returned=1")) == ["pending"]
    assert calls_to(gateway, f"/status/{tx_id}") == 1


def test_plain_visits_do_not_ask_the_gateway(client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    _page(client, tx_id)
    assert calls_to(gateway, "/status/") == 0


@pytest.mark.usefixtures("patient_return_check")
def test_cancel_at_the_gateway_shows_the_cancelled_screen(client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway_status(gateway, tx_id, "cancelled", 1999)
    html = _page(client, tx_id, "?cancelled=1")
    assert _visible_screen(html) == ["cancelled"]


def test_a_slow_gateway_does_not_hold_the_page(app, client, gateway, order_id, monkeypatch):
    tx_id = pay_through_pages(client, gateway, order_id)
    monkeypatch.setattr(pages, "RETURN_CHECK_WAIT_SECONDS", 0.2)

    release, answered = threading.Event(), threading.Event()

    def slow(_request):  # the gateway answers only once the page has been served
        release.wait(10)
        answered.set()
        return 200, {}, f'{{"transaction_id": "{tx_id}", "status": "success", "amount": 1999, "currency": "USD"}}'

    gateway.add_callback("GET", f"{GATEWAY}/status/{tx_id}", callback=slow, content_type="application/json")
    html = _page(client, tx_id, "?returned=1")
    assert not answered.is_set()  # the page was served while the gateway still had not answered
    release.set()
    assert _visible_screen(html) == ["pending"]
    deadline = time.monotonic() + 10
    while _status(app, tx_id) != "success":  # the check finishes in the background (and is pushed)
        assert time.monotonic() < deadline
        time.sleep(0.05)


# -- Cancel --------------------------------------------------------------------------------

def test_cancel_button_cancels_and_returns_to_the_order(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway_expire(gateway, tx_id)
    response = client.post(f"/payment/{tx_id}/cancel", data={"csrf_token": csrf_token(client, f"/payment/{tx_id}")})
    assert response.status_code == 303 and response.headers["Location"] == f"/checkout/{order_id}"
    assert _status(app, tx_id) == "cancelled"
    html = client.get(f"/checkout/{order_id}").get_data(as_text=True)
    assert "Your payment was cancelled" in html and f'action="/checkout/{order_id}/pay"' in html


def test_cancel_after_paying_shows_the_success(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway_expire(gateway, tx_id, paid=True)
    response = client.post(f"/payment/{tx_id}/cancel", data={"csrf_token": csrf_token(client, f"/payment/{tx_id}")})
    assert response.status_code == 303 and response.headers["Location"] == f"/payment/{tx_id}"
    html = _page(client, tx_id)
    assert _visible_screen(html) == ["success"] and "already gone through" in html
    assert fulfillment_probe.calls == [(order_id, tx_id)]


def test_cancel_after_the_payment_expired_says_so(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    page = f"/payment/{tx_id}"
    token = csrf_token(client, page)  # the page was open when its time ran out
    assert post_webhook(app.test_client(), status_event(tx_id, "expired", 1999)).status_code == 200
    response = client.post(f"{page}/cancel", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == f"/checkout/{order_id}"
    assert "Your payment had already expired, so nothing was charged" in client.get(
        f"/checkout/{order_id}").get_data(as_text=True)
    assert _status(app, tx_id) == "expired" and calls_to(gateway, "/expire") == 0


def test_cancel_with_the_gateway_down_keeps_waiting(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway.add("POST", f"{GATEWAY}/sessions/cs_{tx_id}/expire", body=requests.ConnectionError("down"))
    response = client.post(f"/payment/{tx_id}/cancel", data={"csrf_token": csrf_token(client, f"/payment/{tx_id}")})
    assert response.headers["Location"] == f"/payment/{tx_id}"
    html = _page(client, tx_id)
    assert "could not reach the payment service" in html and _visible_screen(html) == ["pending"]
    assert _status(app, tx_id) == "pending"


def test_cancel_without_csrf_token_is_refused(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    assert client.post(f"/payment/{tx_id}/cancel").status_code == 400
    assert _status(app, tx_id) == "pending"


def test_a_stranger_with_the_ids_cannot_cancel_until_the_access_code_is_shown(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway_expire(gateway, tx_id)
    stranger = app.test_client()
    # The order number is all the stranger has; the public API hands out the transaction id.
    assert stranger.post("/initiate-payment", json={"order_id": order_id}).get_json()["transaction_id"] == tx_id
    page = _page(stranger, tx_id)
    assert f'action="/payment/{tx_id}/cancel"' not in page and f'action="/payment/{tx_id}/cancel"' in _page(client, tx_id)
    refused = stranger.post(f"/payment/{tx_id}/cancel", data={"csrf_token": csrf_token(stranger, f"/payment/{tx_id}")},
                            headers={"Accept": "application/json"})
    assert refused.status_code == 403 and refused.get_json()["error"] == "not_your_order"
    assert _status(app, tx_id) == "pending" and calls_to(gateway, f"/sessions/cs_{tx_id}/expire") == 0
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    assert _lookup(stranger, order_id, code).status_code == 200  # now it holds the order
    token = csrf_token(stranger, f"/payment/{tx_id}")
    assert stranger.post(f"/payment/{tx_id}/cancel", data={"csrf_token": token}).status_code == 303
    assert _status(app, tx_id) == "cancelled"


# -- /payment-status -----------------------------------------------------------------------

def _lookup(client, order_id: str, code: str):
    token = csrf_token(client, "/payment-status")
    return client.post("/payment-status", data={"csrf_token": token, "order_id": order_id, "access_code": code})


def test_lookup_form_has_labelled_fields(client):
    html = client.get("/payment-status").get_data(as_text=True)
    assert '<label for="order_id">' in html and '<label for="access_code">' in html
    assert 'name="csrf_token"' in html


def test_lookup_finds_the_payment_and_links_the_live_page(app, client, gateway, order_id):
    tx_id = pay_through_pages(client, gateway, order_id)
    post_webhook(client, status_event(tx_id, "success", 1999))
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    elsewhere = app.test_client()  # the shopper closed the browser
    response = _lookup(elsewhere, order_id, code.lower())
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Paid" in html and f'href="/payment/{tx_id}"' in html
    # Having proved the code, this browser now sees it on the live page.
    assert f"{code[:5]}-{code[5:]}" in _page(elsewhere, tx_id)


def test_lookup_refuses_a_wrong_code_and_an_unknown_order_alike(app, client, gateway, order_id):
    pay_through_pages(client, gateway, order_id)
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    wrong_code = _lookup(client, order_id, "ZZZZZZZZZZ" if code != "ZZZZZZZZZZ" else "0000000000")
    unknown_order = _lookup(client, "ord_" + "x" * 16, code)
    assert wrong_code.status_code == unknown_order.status_code == 404
    for response in (wrong_code, unknown_order):
        html = response.get_data(as_text=True)
        assert pages.LOOKUP_REFUSED in html and "/payment/txn_" not in html
        assert re.search(r'<input[^>]*id="order_id"[^>]*autofocus', html, re.S)  # focus goes back to the form


def test_lookup_of_an_order_without_a_payment(app, client, order_id):
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    html = _lookup(client, order_id, code).get_data(as_text=True)
    assert "No payment was started" in html and f'href="/checkout/{order_id}"' in html


def test_lookup_is_rate_limited_per_address(app, make_app):
    limited = make_app(RATELIMIT_ENABLED=True)
    limiter.reset()
    client = limited.test_client()
    answers = [_lookup(client, "ord_missing", "ABCDEFGHJK").status_code for _ in range(11)]
    assert answers[:10] == [404] * 10 and answers[10] == 429
    assert client.get("/payment-status").status_code == 200  # the form itself is not limited


def test_cancel_is_recorded_as_cancelled_when_the_gateways_expiry_webhook_wins(app, client, gateway, order_id):
    """The gateway announces the expiry by webhook, sometimes before it answers our expire call:
    that expiry is the shopper's cancel, and is recorded as one."""
    tx_id = pay_through_pages(client, gateway, order_id)

    def expire_and_announce_first(request):
        assert post_webhook(app.test_client(), status_event(tx_id, "expired", 1999)).status_code == 200
        with app.app_context():
            assert db.session.get(Transaction, tx_id).status == "cancelled"  # the webhook recorded it
        return 200, {}, '{"status": "expired"}'

    gateway.add_callback("POST", f"{GATEWAY}/sessions/cs_{tx_id}/expire", callback=expire_and_announce_first,
                         content_type="application/json")
    response = client.post(f"/payment/{tx_id}/cancel", data={"csrf_token": csrf_token(client, f"/payment/{tx_id}")})
    assert response.status_code == 303 and response.headers["Location"] == f"/checkout/{order_id}"
    assert "Your payment was cancelled and nothing was charged" in client.get(f"/checkout/{order_id}").get_data(
        as_text=True)
    with app.app_context():
        lines = [(e.source, e.outcome, e.to_status, e.summary) for e in db.session.get(Transaction, tx_id).events
                 if e.kind == "status"]
    assert ("webhook", "applied", "cancelled",
            "gateway says expired: the session was closed on request, so cancelled") in lines


def test_an_expiry_after_a_failed_cancel_is_an_expiry(app, client, gateway, order_id):
    """A cancel the gateway never confirmed leaves nothing behind: the session's own expiry later
    is recorded as expired, not as the cancel the shopper was told had failed."""
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway.add("POST", f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=503)
    page = f"/payment/{tx_id}"
    client.post(f"{page}/cancel", data={"csrf_token": csrf_token(client, page)})
    assert "could not reach the payment service" in client.get(page).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Transaction, tx_id).status == "pending"
    assert post_webhook(app.test_client(), status_event(tx_id, "expired", 1999)).status_code == 200
    with app.app_context():
        assert db.session.get(Transaction, tx_id).status == "expired"


def test_a_failed_payment_page_offers_no_retry_once_the_order_is_paid(app, client, gateway, order_id):
    failed = pay_through_pages(client, gateway, order_id)
    assert post_webhook(app.test_client(), status_event(failed, "failure", 1999)).status_code == 200
    assert 'action="/checkout/' in _page(client, failed)  # Try again, while the order is open
    paid = pay_through_pages(client, gateway, order_id)
    assert post_webhook(app.test_client(), status_event(paid, "success", 1999)).status_code == 200
    html = _page(client, failed)
    assert _visible_screen(html) == ["failure"] and 'action="/checkout/' not in html
    assert "This order has been paid since" in html and f'href="/payment/{paid}"' in html


@pytest.mark.parametrize("after_404", ["unreachable", "still pending"])
def test_a_cancel_that_did_not_close_the_session_is_forgotten(app, client, gateway, order_id, after_404):
    """The gateway has no such session (404) and then cannot be asked, or says pending: the
    cancel did not happen, so the session's own expiry later is recorded as an expiry."""
    tx_id = pay_through_pages(client, gateway, order_id)
    gateway.add("POST", f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=404, json={"error": "not_found"})
    if after_404 == "unreachable":
        gateway.add("GET", f"{GATEWAY}/status/{tx_id}", body=requests.ConnectionError("down"))
    else:
        gateway_status(gateway, tx_id, "pending", 1999)
    page = f"/payment/{tx_id}"
    client.post(f"{page}/cancel", data={"csrf_token": csrf_token(client, page)})
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert (tx.status, tx.closing_as) == ("pending", None)
    assert post_webhook(app.test_client(), status_event(tx_id, "expired", 1999)).status_code == 200
    assert _status(app, tx_id) == "expired"
