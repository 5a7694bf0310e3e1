"""Contract promises of sections 1, 3 and 4 and of the preamble that other tests leave unchecked.

- section 3: a pending transaction past its expires_at is not handed out again;
- section 1: the expires_at sent to the gateway is creation + PAYMENT_EXPIRES_AFTER as configured;
- section 3: an Idempotency-Key answer is still replayed just under 24 hours later;
- section 4: every gateway call carries ``Authorization: Bearer <PAYMENT_GATEWAY_API_KEY>``;
- section 4 and 1: create-session's body is the contract's, its addresses built from PUBLIC_BASE_URL;
- preamble: 405, 413, 415 and the webhook's 400 have the ``{"error", "message"}`` shape.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import requests
import responses
from sqlalchemy import update

from app.extensions import db
from app.jobs.housekeeping import prune_expired_records
from app.models import IdempotencyRecord, Transaction
from app.models.clock import utcnow
from app.services import refunds
from tests.conftest import GATEWAY, open_sessions, place_order, post_webhook, prepare_database, sign, status_event
from tests.jobs.support import (
    CHECK_AFTER,
    EXPIRES_AFTER,
    answer_expire,
    answer_status,
    reconcile,
    row,
    set_age,
)


def create_session_calls(gateway) -> list:
    return [c for c in gateway.calls if c.request.url == f"{GATEWAY}/create-session"]


def stored(app, tx_id: str) -> Transaction:
    return row(app, tx_id)


def parse_iso(text: str) -> datetime:
    """An ISO 8601 timestamp from the wire as naive UTC (the form the database stores)."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


# -- section 3: only a still-pending, *unexpired* transaction is handed out again -------------------


def test_a_pending_transaction_past_its_expires_at_is_not_handed_out_again(app, client, gateway):
    open_sessions(gateway)
    order = place_order(client)
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert first.status_code == 201
    old_id = first.get_json()["transaction_id"]
    with app.app_context():  # its expiry passed; no reconciliation pass has expired it yet
        db.session.execute(update(Transaction).where(Transaction.id == old_id)
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert stored(app, old_id).status == "pending"

    again = client.post("/initiate-payment", json={"order_id": order["order_id"]})

    assert again.status_code == 201, again.get_json()
    body = again.get_json()
    assert body["transaction_id"] != old_id
    assert body["payment_url"] != first.get_json()["payment_url"]
    # a second gateway session, for the new transaction
    sessions = create_session_calls(gateway)
    assert [c.request.headers["Idempotency-Key"] for c in sessions] == [old_id, body["transaction_id"]]
    assert parse_iso(body["expires_at"]) > utcnow()
    assert stored(app, body["transaction_id"]).status == "pending"


def test_a_pending_transaction_before_its_expires_at_is_handed_out_again(app, client, gateway):
    """The other side of the line above: a minute before its expiry it is still the same one."""
    open_sessions(gateway)
    order = place_order(client)
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}).get_json()
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == first["transaction_id"])
                           .values(expires_at=utcnow() + timedelta(seconds=60)))
        db.session.commit()
    again = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert again.status_code == 200
    assert again.get_json()["transaction_id"] == first["transaction_id"]
    assert len(create_session_calls(gateway)) == 1


# -- section 1: the expires_at sent to the gateway ---------------------------------------------------


def test_the_expires_at_sent_to_the_gateway_is_creation_plus_the_configured_window(make_app, database_url,
                                                                                    gateway):
    window = 777  # not the default 1800
    app = make_app(PAYMENT_EXPIRES_AFTER=window)
    prepare_database(app, database_url)
    client = app.test_client()
    open_sessions(gateway)
    order = place_order(client)
    answer = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert answer.status_code == 201
    tx_id = answer.get_json()["transaction_id"]
    [call] = create_session_calls(gateway)
    sent = parse_iso(json.loads(call.request.body)["expires_at"])

    tx = stored(app, tx_id)
    assert tx.expires_at - tx.created_at == timedelta(seconds=window)
    expected = tx.created_at + timedelta(seconds=window)
    # the wire form has millisecond precision: the same instant, to the millisecond
    assert abs(sent - expected) < timedelta(milliseconds=1), (sent, expected)
    assert abs(parse_iso(answer.get_json()["expires_at"]) - expected) < timedelta(milliseconds=1)


def test_a_session_opened_later_still_sends_the_window_configured_at_creation(make_app, database_url, gateway):
    """'as configured at creation': a process with another window that opens the gateway session
    of a payment created earlier (whose first process stopped before the gateway answered) sends
    the payment's own expires_at."""
    first_app = make_app(PAYMENT_EXPIRES_AFTER=777)
    prepare_database(first_app, database_url)
    open_sessions(gateway)
    order = place_order(first_app.test_client())
    tx_id = first_app.test_client().post("/initiate-payment", json={"order_id": order["order_id"]}
                                         ).get_json()["transaction_id"]
    with first_app.app_context():  # as if its process had stopped before the gateway answered
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(payment_url=None, gateway_session_id=None))
        db.session.commit()
    created = stored(first_app, tx_id)
    later_app = make_app(PAYMENT_EXPIRES_AFTER=3000)

    again = later_app.test_client().post("/initiate-payment", json={"order_id": order["order_id"]})

    assert again.status_code == 200 and again.get_json()["transaction_id"] == tx_id
    first_call, second_call = create_session_calls(gateway)
    assert second_call.request.headers["Idempotency-Key"] == tx_id
    sent = parse_iso(json.loads(second_call.request.body)["expires_at"])
    expected = created.created_at + timedelta(seconds=777)
    assert abs(sent - expected) < timedelta(milliseconds=1), (sent, expected)
    assert stored(later_app, tx_id).expires_at == expected


# -- section 3: the same Idempotency-Key is replayed for at least 24 hours ---------------------------

ALMOST_A_DAY = timedelta(hours=24) - timedelta(minutes=1)


def _age_idempotency_record(app, key: str, by: timedelta) -> None:
    """Test data setup: make the stored answer look ``by`` older (no sleeping for a day)."""
    with app.app_context():
        record = db.session.get(IdempotencyRecord, key)
        assert record is not None and record.status_code is not None
        db.session.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == key)
                           .values(created_at=record.created_at - by))
        db.session.commit()


def test_an_idempotency_key_is_replayed_just_under_24_hours_later(app, client, gateway):
    open_sessions(gateway)
    order = place_order(client)
    headers = {"Idempotency-Key": "day-old-key"}
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    assert first.status_code == 201
    # the order is paid since: answered afresh, the request would now be 409 order_already_paid
    post_webhook(client, status_event(first.get_json()["transaction_id"], "success", order["total"]))
    assert client.post("/initiate-payment", json={"order_id": order["order_id"]}).status_code == 409
    _age_idempotency_record(app, "day-old-key", ALMOST_A_DAY)
    with app.app_context():  # a reconciliation pass's housekeeping runs in between
        prune_expired_records()

    replay = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)

    assert (replay.status_code, replay.get_json()) == (201, first.get_json())
    assert len(create_session_calls(gateway)) == 1
    # and a different body under the key is still refused as a reuse
    other = client.post("/initiate-payment", json={"order_id": order["order_id"], "amount": 1},
                        headers=headers)
    assert other.status_code == 422 and other.get_json()["error"] == "idempotency_key_reused"


def test_a_gateway_failure_under_an_idempotency_key_is_replayed_just_under_24_hours_later(app, client, gateway):
    """Answered afresh once the gateway is back, the request would now be 201: the replay is the 502."""
    gateway.add(responses.POST, f"{GATEWAY}/create-session", body=requests.ConnectionError("down"))
    order = place_order(client)
    headers = {"Idempotency-Key": "day-old-failure"}
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    assert first.status_code == 502 and first.get_json()["error"] == "gateway_unavailable"
    attempts = len(create_session_calls(gateway))
    gateway.replace(responses.POST, f"{GATEWAY}/create-session",
                    json={"session_id": "cs_back", "payment_url": f"{GATEWAY}/pay/cs_back"})
    _age_idempotency_record(app, "day-old-failure", ALMOST_A_DAY)

    replay = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)

    assert (replay.status_code, replay.get_json()) == (502, first.get_json())
    assert len(create_session_calls(gateway)) == attempts
    fresh = client.post("/initiate-payment", json={"order_id": order["order_id"]})  # without the key
    assert fresh.status_code == 201


# -- section 4: Authorization: Bearer <PAYMENT_GATEWAY_API_KEY> on every call -----------------------

CUSTOM_KEY = "sk_live_contract_promise_key_9f2c"


def test_every_gateway_call_carries_the_configured_bearer_key(make_app, database_url, gateway):
    app = make_app(PAYMENT_GATEWAY_API_KEY=CUSTOM_KEY, FULFILLMENT_HANDLER="tests.fulfillment_probe:record")
    prepare_database(app, database_url)
    client = app.test_client()
    open_sessions(gateway)
    checked, expiring = (client.post("/initiate-payment", json={"order_id": place_order(client)["order_id"]}
                                     ).get_json()["transaction_id"] for _ in range(2))
    set_age(app, checked, CHECK_AFTER + 60)
    set_age(app, expiring, EXPIRES_AFTER + 60)
    answer_status(gateway, checked, "success")
    answer_expire(gateway, expiring, 200)
    reconcile(app)
    assert (stored(app, checked).status, stored(app, expiring).status) == ("success", "expired")
    gateway.add(responses.POST, f"{GATEWAY}/refunds", json={"refund_id": "re_1", "status": "succeeded"})
    with app.app_context():
        refunds.refund(checked, 500, actor="ops@example.test")
    assert stored(app, checked).status == "partially_refunded"

    called = {}
    for call in gateway.calls:
        path = call.request.path_url
        kind = ("create-session" if path == "/create-session" else "status" if path.startswith("/status/")
                else "expire" if path.endswith("/expire") else "refunds" if path == "/refunds" else path)
        called.setdefault(kind, []).append(call.request.headers.get("Authorization"))
    assert set(called) == {"create-session", "status", "expire", "refunds"}
    for kind, sent in called.items():
        assert sent == [f"Bearer {CUSTOM_KEY}"] * len(sent), kind


# -- section 4 (and 1): the create-session body, its addresses from PUBLIC_BASE_URL ---------------------

SHOP_ORIGIN = "https://shop.contract.example"  # not the test default: the addresses must come from it


def test_create_session_sends_the_contract_body_with_addresses_under_public_base_url(make_app, database_url,
                                                                                     gateway):
    app = make_app(PUBLIC_BASE_URL=SHOP_ORIGIN)
    prepare_database(app, database_url)
    client = app.test_client()
    open_sessions(gateway)
    order = place_order(client, [("TEE-BLACK", 2)])
    answer = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert answer.status_code == 201, answer.get_json()
    tx_id = answer.get_json()["transaction_id"]

    [call] = create_session_calls(gateway)
    assert call.request.method == "POST"
    assert call.request.headers["Idempotency-Key"] == tx_id
    sent = json.loads(call.request.body)
    assert set(sent) >= {"transaction_id", "amount", "currency", "callback_url", "return_url", "cancel_url",
                         "expires_at"}  # the contract may add fields, never drop one
    assert (sent["transaction_id"], sent["amount"], sent["currency"]) == (tx_id, 2 * 1999, "USD")
    assert type(sent["amount"]) is int
    # the gateway calls the webhook here, and sends the shopper back (paid or not) to the waiting page
    assert sent["callback_url"] == f"{SHOP_ORIGIN}/payment-callback"
    for field in ("return_url", "cancel_url"):
        assert sent[field].split("?")[0] == f"{SHOP_ORIGIN}/payment/{tx_id}", (field, sent[field])
    assert answer.get_json()["status_url"] == f"{SHOP_ORIGIN}/check-payment-status/{tx_id}"


# -- preamble: the JSON error shape --------------------------------------------------------------------


def _assert_error_shape(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict) and {"error", "message"} <= set(body), body
    assert isinstance(body["error"], str) and body["error"].replace("_", "").isalpha()
    assert body["error"] == body["error"].lower()
    assert isinstance(body["message"], str) and body["message"].strip(), body
    if code is not None:
        assert body["error"] == code
    return body


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/initiate-payment"),
    ("put", "/initiate-payment"),
    ("delete", "/initiate-payment"),
    ("post", "/check-payment-status/txn_whatever"),
    ("delete", "/check-payment-status/txn_whatever"),
    ("get", "/payment-callback"),
    ("put", "/payment-callback"),
])
def test_a_wrong_method_on_a_payment_route_is_405_with_error_and_message(client, method, path):
    response = getattr(client, method)(path, headers={"Accept": "text/html"})  # JSON whatever the browser likes
    _assert_error_shape(response, 405, "method_not_allowed")
    assert response.headers.get("Allow")


@pytest.mark.parametrize("path", ["/initiate-payment", "/api/orders"])
def test_415_has_a_message(client, path):
    response = client.post(path, data="order_id=x", content_type="application/x-www-form-urlencoded")
    _assert_error_shape(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/initiate-payment", "/api/orders", "/payment-callback"])
def test_413_has_a_message(client, path):
    response = client.post(path, data="x" * (65 * 1024), content_type="application/json")
    _assert_error_shape(response, 413, "payload_too_large")


def _unsigned(body: dict) -> tuple[bytes, dict]:
    raw, headers = sign(body)
    return raw, {**headers, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}


def _stale(body: dict) -> tuple[bytes, dict]:
    return sign(body, timestamp=datetime.now(timezone.utc) - timedelta(seconds=600))


def _no_headers(body: dict) -> tuple[bytes, dict]:
    return json.dumps(body).encode(), {"content-type": "application/json"}


@pytest.mark.parametrize("make", [_unsigned, _stale, _no_headers], ids=["wrong signature", "old timestamp",
                                                                         "no signature"])
def test_the_webhook_s_400_has_a_message(client, make):
    raw, headers = make(status_event("txn_anything", "success", 1999))
    response = client.post("/payment-callback", data=raw, headers=headers)
    _assert_error_shape(response, 400)


def test_every_error_named_in_sections_2_and_3_has_error_and_message(client, gateway):
    """The named refusals of the shop and payment APIs, each in the preamble's shape (the tests
    beside each refusal check its code only)."""
    open_sessions(gateway)
    order = place_order(client)
    _assert_error_shape(client.get("/api/orders/ord_nope"), 404, "order_not_found")
    _assert_error_shape(client.post("/api/orders", json={"items": [{"sku": "NOPE", "quantity": 1}]}), 422)
    _assert_error_shape(client.post("/api/orders", json={"items": []}), 422)
    _assert_error_shape(client.get("/check-payment-status/txn_nope"), 404, "transaction_not_found")
    _assert_error_shape(client.post("/initiate-payment", json={"order_id": "ord_nope"}), 404, "order_not_found")
    mismatch = client.post("/initiate-payment", json={"order_id": order["order_id"], "amount": 1})
    _assert_error_shape(mismatch, 422, "amount_mismatch")
    keyed = {"Idempotency-Key": "shape-key"}
    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=keyed)
    assert first.status_code == 201
    reused = client.post("/initiate-payment", json={"order_id": order["order_id"], "amount": order["total"]},
                         headers=keyed)
    _assert_error_shape(reused, 422, "idempotency_key_reused")
    post_webhook(client, status_event(first.get_json()["transaction_id"], "success", order["total"]))
    paid = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    _assert_error_shape(paid, 409, "order_already_paid")
    down = place_order(client)
    gateway.replace(responses.POST, f"{GATEWAY}/create-session", body=requests.ConnectionError("down"))
    unavailable = _assert_error_shape(client.post("/initiate-payment", json={"order_id": down["order_id"]}), 502,
                                      "gateway_unavailable")
    assert unavailable["transaction_id"].startswith("txn_")
