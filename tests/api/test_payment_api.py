"""Contract section 3: initiate-payment and check-payment-status."""

import base64
import itertools
import json
import os
import re

from datetime import timedelta

import pytest
import requests
import responses
from sqlalchemy import update

from app.extensions import db
from app.models import Transaction
from app.models.clock import utcnow
from app.services import checkout

from tests import fulfillment_probe
from tests.conftest import GATEWAY, open_sessions, place_order, post_webhook, start_payment, status_event


def test_initiate_stores_a_pending_transaction_with_the_order_amount(client, gateway):
    open_sessions(gateway)
    order = place_order(client, [("TEE-BLACK", 2)])
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "pending"
    assert body["payment_url"] == f"{GATEWAY}/pay/cs_{body['transaction_id']}"
    assert body["status_url"].endswith(f"/check-payment-status/{body['transaction_id']}")
    assert body["expires_at"].endswith("Z")
    sent = json.loads(gateway.calls[0].request.body)
    assert sent["amount"] == 3998 and sent["currency"] == "USD"
    assert sent["transaction_id"] == body["transaction_id"]
    assert gateway.calls[0].request.headers["Idempotency-Key"] == body["transaction_id"]
    assert gateway.calls[0].request.headers["Authorization"].startswith("Bearer ")
    assert sent["callback_url"].endswith("/payment-callback")


def test_transaction_ids_are_long_and_random(client, gateway):
    """Contract: transaction_id is unguessable (at least 96 random bits), never a sequential number."""
    ids = [start_payment(client, gateway, place_order(client)["order_id"])["transaction_id"] for _ in range(20)]
    assert len(set(ids)) == len(ids)
    suffixes = []
    for tx_id in ids:
        match = re.fullmatch(r"txn_([A-Za-z0-9_-]+)", tx_id)
        assert match, tx_id
        suffix = match.group(1)
        assert len(suffix) % 4 != 1, tx_id  # a whole number of bytes in unpadded base64url
        assert len(base64.urlsafe_b64decode(suffix + "=" * (-len(suffix) % 4))) * 8 >= 96, tx_id
        suffixes.append(suffix)
    # Nothing in them counts up: not in creation order, no shared leading characters (a counter
    # or a clock would keep those), and every character position varies from id to id.
    assert ids != sorted(ids) and ids != sorted(ids, reverse=True)
    assert max(len(os.path.commonprefix([a, b])) for a, b in itertools.combinations(suffixes, 2)) < 6
    width = min(len(s) for s in suffixes)
    assert all(len({s[i] for s in suffixes}) > 1 for i in range(width)), suffixes


def test_amount_from_the_browser_must_match(client, gateway):
    open_sessions(gateway)
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"], "amount": 1})
    assert response.status_code == 422
    assert response.get_json()["error"] == "amount_mismatch"
    assert len(gateway.calls) == 0
    same = client.post("/initiate-payment", json={"order_id": order["order_id"], "amount": order["total"]})
    assert same.status_code == 201


def test_unknown_order_is_404(client, gateway):
    response = client.post("/initiate-payment", json={"order_id": "ord_missing"})
    assert response.status_code == 404
    assert response.get_json()["error"] == "order_not_found"


@pytest.mark.parametrize("body", [{"order_id": 5}, {"order_id": "x", "amount": "1999"},
                                  {"order_id": "x", "amount": 19.99}, {}, {"amount": 1}])
def test_wrong_types_are_422(client, body):
    response = client.post("/initiate-payment", json=body)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_error"


def test_pending_transaction_is_reused_without_a_second_session(client, gateway):
    order = place_order(client)
    first = start_payment(client, gateway, order["order_id"])
    again = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert again.status_code == 200
    assert again.get_json()["transaction_id"] == first["transaction_id"]
    assert again.get_json()["payment_url"] == first["payment_url"]
    assert len([c for c in gateway.calls if c.request.url.endswith("/create-session")]) == 1


def test_a_payment_overdue_by_a_lowered_window_is_still_the_one_handed_out(app, client, gateway):
    """Section 1: a lowered PAYMENT_EXPIRES_AFTER applies to payments already pending, so one older
    than the new window is due for expiry. Until the pass closes it, its gateway session stays
    open (its expires_at is ahead): initiation hands that one out again, and the checkout page
    offers to follow it, rather than open a second session the shopper could pay beside it."""
    order = place_order(client)
    first = start_payment(client, gateway, order["order_id"])["transaction_id"]
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == first)
                           .values(created_at=utcnow() - timedelta(seconds=600)))
        db.session.commit()
    app.config["PAYMENT_EXPIRES_AFTER"] = 300

    again = client.post("/initiate-payment", json={"order_id": order["order_id"]})

    assert again.status_code == 200
    assert again.get_json()["transaction_id"] == first
    assert len([c for c in gateway.calls if c.request.url.endswith("/create-session")]) == 1
    with app.app_context():
        assert checkout.payment_in_progress(order["order_id"]).id == first


def test_paid_order_is_409(client, gateway):
    order = place_order(client)
    tx = start_payment(client, gateway, order["order_id"])
    assert post_webhook(client, status_event(tx["transaction_id"], "success", order["total"])).status_code == 200
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 409
    assert response.get_json()["error"] == "order_already_paid"


def test_idempotency_key_replays_the_same_answer(client, gateway):
    open_sessions(gateway)
    order = place_order(client)
    headers = {"Idempotency-Key": "key-123"}
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    # The order gets paid in between: the replay still gives the first answer.
    post_webhook(client, status_event(first.get_json()["transaction_id"], "success", order["total"]))
    second = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    assert (second.status_code, second.get_json()) == (first.status_code, first.get_json()) == (201, first.get_json())
    reused = client.post("/initiate-payment", json={"order_id": order["order_id"], "amount": 1999}, headers=headers)
    assert reused.status_code == 422
    assert reused.get_json()["error"] == "idempotency_key_reused"


@pytest.mark.parametrize(("data", "content_type"), [
    ("{not json", "application/json"), ('{"order_id": 5}', "application/json"), ("order_id=x", "text/plain"),
])
def test_a_used_key_with_a_body_refused_outright_is_reused_not_another_error(client, gateway, data, content_type):
    open_sessions(gateway)
    order = place_order(client)
    headers = {"Idempotency-Key": "key-used"}
    assert client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers).status_code == 201
    reused = client.post("/initiate-payment", data=data, content_type=content_type, headers=headers)
    assert reused.status_code == 422 and reused.get_json()["error"] == "idempotency_key_reused"
    # without a used key the same bodies get their own errors
    fresh = client.post("/initiate-payment", data=data, content_type=content_type, headers={"Idempotency-Key": "new"})
    assert fresh.get_json()["error"] in ("malformed_json", "validation_error", "unsupported_media_type")


def test_idempotency_key_replays_refusals_too(client, gateway):
    headers = {"Idempotency-Key": "k-404"}
    first = client.post("/initiate-payment", json={"order_id": "ord_missing"}, headers=headers)
    second = client.post("/initiate-payment", json={"order_id": "ord_missing"}, headers=headers)
    assert first.status_code == second.status_code == 404
    assert first.get_json() == second.get_json()


def test_idempotency_key_longer_than_255_is_refused(client, gateway):
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]},
                           headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_idempotency_key"


def as_sent_in_utf8(text: str) -> str:
    """A header value as a server hands UTF-8 bytes to the app (WSGI decodes them as Latin-1)."""
    return text.encode("utf-8").decode("latin-1")


def test_idempotency_key_length_counts_characters_not_bytes(client, gateway):
    open_sessions(gateway)
    order = place_order(client)
    key = as_sent_in_utf8("ü" * 200)  # 200 characters, 400 bytes
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers={"Idempotency-Key": key})
    again = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers={"Idempotency-Key": key})
    assert first.status_code == 201 and (again.status_code, again.get_json()) == (201, first.get_json())
    too_long = client.post("/initiate-payment", json={"order_id": order["order_id"]},
                           headers={"Idempotency-Key": as_sent_in_utf8("ü" * 256)})
    assert too_long.status_code == 400 and too_long.get_json()["error"] == "invalid_idempotency_key"


def test_gateway_down_gives_502_and_a_failed_transaction(client, gateway):
    gateway.add(responses.POST, f"{GATEWAY}/create-session", body=requests.ConnectionError("refused"))
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 502
    body = response.get_json()
    assert body["error"] == "gateway_unavailable"
    status = client.get(f"/check-payment-status/{body['transaction_id']}").get_json()
    assert status["status"] == "failure"
    # Every attempt carried the same gateway idempotency key: the transaction id.
    keys = {c.request.headers["Idempotency-Key"] for c in gateway.calls}
    assert keys == {body["transaction_id"]}
    # A later call starts a new transaction.
    gateway.replace(responses.POST, f"{GATEWAY}/create-session",
                    json={"session_id": "cs_new", "payment_url": f"{GATEWAY}/pay/cs_new"})
    retry = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert retry.status_code == 201
    assert retry.get_json()["transaction_id"] != body["transaction_id"]


@pytest.mark.parametrize("answer", [
    {"session_id": "c" * 129, "payment_url": f"{GATEWAY}/pay/cs_1"},  # longer than its column
    {"session_id": "cs\x001", "payment_url": f"{GATEWAY}/pay/cs_1"},
    {"session_id": "cs_\ud800", "payment_url": f"{GATEWAY}/pay/cs_1"},  # a lone surrogate
    {"session_id": "cs_1", "payment_url": f"{GATEWAY}/pay/{'x' * 2000}"},
])
def test_a_create_session_answer_that_could_not_be_stored_is_a_gateway_failure(client, gateway, answer):
    """Not a 500: the gateway's answer is unusable, as a malformed one is (502, payment failed)."""
    gateway.add(responses.POST, f"{GATEWAY}/create-session", json=answer)
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert (response.status_code, response.get_json()["error"]) == (502, "gateway_unavailable")
    status = client.get(f"/check-payment-status/{response.get_json()['transaction_id']}").get_json()
    assert status["status"] == "failure"


def test_gateway_5xx_is_retried_with_the_same_key_then_succeeds(client, gateway):
    gateway.add(responses.POST, f"{GATEWAY}/create-session", status=503, json={"error": "busy"})
    gateway.add(responses.POST, f"{GATEWAY}/create-session", status=429, json={"error": "slow down"})
    gateway.add(responses.POST, f"{GATEWAY}/create-session",
                json={"session_id": "cs_1", "payment_url": f"{GATEWAY}/pay/cs_1"})
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 201
    assert len(gateway.calls) == 3
    assert len({c.request.headers["Idempotency-Key"] for c in gateway.calls}) == 1


def test_gateway_5xx_forever_gives_502_after_bounded_retries(client, gateway):
    gateway.add(responses.POST, f"{GATEWAY}/create-session", status=500, json={})
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 502
    assert len(gateway.calls) == 4  # the first try and three retries


def test_check_status_shape_and_404(client, gateway):
    order = place_order(client)
    tx = start_payment(client, gateway, order["order_id"])
    body = client.get(f"/check-payment-status/{tx['transaction_id']}").get_json()
    assert set(body) == {"transaction_id", "order_id", "status", "amount", "currency", "updated_at"}
    assert (body["status"], body["amount"], body["order_id"]) == ("pending", 1999, order["order_id"])
    missing = client.get("/check-payment-status/txn_missing")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "transaction_not_found"


def test_money_in_the_status_answer_is_an_integer_with_an_upper_case_currency(client, gateway):
    """Contract preamble and section 3: amount is an int of minor units (1999.0 would compare equal
    to 1999 in Python, so the JSON type is checked), currency an ISO 4217 code in upper case."""
    order = place_order(client, [("TEE-BLACK", 3)])
    tx = start_payment(client, gateway, order["order_id"])
    body = client.get(f"/check-payment-status/{tx['transaction_id']}").get_json()
    assert type(body["amount"]) is int and body["amount"] == 3 * 1999, body
    assert re.fullmatch(r"[A-Z]{3}", body["currency"]) and body["currency"] == "USD", body


def test_the_pending_transaction_is_stored_before_the_gateway_is_called(app, client, gateway):
    """Section 3: while create-session is on its way, the transaction can already be read, pending,
    from another connection, with the stored order's amount."""
    seen = []

    def create(request):
        key = request.headers["Idempotency-Key"]
        status = app.test_client().get(f"/check-payment-status/{key}")
        seen.append((status.status_code, status.get_json()))
        return 200, {}, json.dumps({"session_id": f"cs_{key}", "payment_url": f"{GATEWAY}/pay/cs_{key}"})

    gateway.add_callback(responses.POST, f"{GATEWAY}/create-session", callback=create)
    order = place_order(client, [("MUG-ENAMEL", 2)])
    answer = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert answer.status_code == 201
    tx_id = answer.get_json()["transaction_id"]
    [(code, body)] = seen
    assert code == 200, body
    assert (body["transaction_id"], body["order_id"], body["status"], body["amount"], body["currency"]) == \
        (tx_id, order["order_id"], "pending", 2 * 1250, "USD")


def test_an_order_paid_whose_handler_has_not_returned_is_409_too(app, client, gateway):
    """Section 3: 'already paid' is the order's paid state too, not only fulfilled (the handler
    raised, so the order waits, paid, for the next reconciliation pass)."""
    order = place_order(client)
    tx = start_payment(client, gateway, order["order_id"])
    fulfillment_probe.reset(fail_times=1)
    assert post_webhook(client, status_event(tx["transaction_id"], "success", order["total"])).status_code == 200
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "paid"
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 409
    assert response.get_json()["error"] == "order_already_paid"
    assert len([c for c in gateway.calls if c.request.url.endswith("/create-session")]) == 1


def test_an_idempotency_key_of_exactly_255_characters_is_accepted(client, gateway):
    """Section 3: keys are at most 255 characters, so 255 is a key (256 is refused, tested above)."""
    open_sessions(gateway)
    order = place_order(client)
    headers = {"Idempotency-Key": "k" * 254 + "z"}
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    assert first.status_code == 201, first.get_json()
    again = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    assert (again.status_code, again.get_json()) == (201, first.get_json())


def _race_two_initiations(app, client, gateway, order_id: str, second_fails: bool):
    """The first initiation's create-session call runs a whole second initiation for the same
    order (another browser tab) before it answers; one of the two gateway calls fails."""
    state = {"first": True, "second": None}

    def create(request):
        key = request.headers["Idempotency-Key"]
        if state["first"]:
            state["first"] = False
            state["second"] = app.test_client().post("/initiate-payment", json={"order_id": order_id})
            if not second_fails:
                raise requests.ConnectionError("the first tab's call is lost")
        elif second_fails and state["second"] is None:
            raise requests.ConnectionError("the second tab's call is lost")
        elif not second_fails and state["second"] is not None:
            raise requests.ConnectionError("the first tab's call is lost")
        return 200, {}, json.dumps({"session_id": f"cs_{key}", "payment_url": f"{GATEWAY}/pay/cs_{key}"})

    gateway.add_callback(responses.POST, f"{GATEWAY}/create-session", callback=create)
    first = client.post("/initiate-payment", json={"order_id": order_id})
    return first, state["second"]


def _handed_out(*answers) -> dict[str, str]:
    """transaction id -> payment_url of every answer that gave the shopper a payment page."""
    return {a.get_json()["transaction_id"]: a.get_json()["payment_url"] for a in answers
            if a.status_code in (200, 201) and a.get_json().get("payment_url")}


def test_a_failed_racing_initiation_never_fails_a_payment_whose_page_was_handed_out(app, client, gateway):
    """The second tab's gateway call fails while the first tab's call for the same payment is
    still on its way: the second gives the payment up as failed before the first's page is
    saved, so that page, though the gateway opened it, is never handed out for a dead payment."""
    order_id = place_order(client)["order_id"]
    first, second = _race_two_initiations(app, client, gateway, order_id, second_fails=True)
    assert second.status_code == 502 and second.get_json()["error"] == "gateway_unavailable", second.get_json()
    assert first.status_code == 502 and first.get_json()["error"] == "gateway_unavailable", first.get_json()
    tx_id = first.get_json()["transaction_id"]
    assert second.get_json()["transaction_id"] == tx_id  # both tabs were opening the one payment
    # The first tab's call did open a page at the gateway, for that payment...
    opened = [c for c in gateway.calls if isinstance(c.response, requests.Response) and c.response.status_code == 200]
    assert [c.request.headers["Idempotency-Key"] for c in opened] == [tx_id]
    page = json.loads(opened[0].response.text)["payment_url"]
    # ...which nobody was given, and which was not kept on the failed payment.
    assert _handed_out(first, second) == {}
    assert page not in first.get_data(as_text=True) + second.get_data(as_text=True)
    assert client.get(f"/check-payment-status/{tx_id}").get_json()["status"] == "failure"
    with app.app_context():
        from app.extensions import db
        from app.models import Transaction

        assert db.session.get(Transaction, tx_id).payment_url is None
    assert page not in client.get(f"/payment/{tx_id}").get_data(as_text=True)
    third = client.post("/initiate-payment", json={"order_id": order_id})
    assert third.status_code == 201 and third.get_json()["transaction_id"] != tx_id
    assert _handed_out(third) == {third.get_json()["transaction_id"]: third.get_json()["payment_url"]}


def test_a_failed_gateway_call_hands_out_the_page_a_racing_initiation_opened(app, client, gateway):
    order_id = place_order(client)["order_id"]
    first, second = _race_two_initiations(app, client, gateway, order_id, second_fails=False)
    assert second.status_code == 200 and second.get_json()["payment_url"]
    assert first.status_code == 201
    assert first.get_json()["payment_url"] == second.get_json()["payment_url"]
    tx_id = first.get_json()["transaction_id"]
    assert second.get_json()["transaction_id"] == tx_id
    assert client.get(f"/check-payment-status/{tx_id}").get_json()["status"] == "pending"
