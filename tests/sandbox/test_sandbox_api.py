"""The gateway API of contract section 4, through the Flask test client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.sandbox import refunds as sandbox_refunds

from .support import AUTH, PUBLIC_URL, session_body

ENDPOINTS = [
    ("post", "/create-session"),
    ("get", "/status/tx_1"),
    ("post", "/sessions/cs_x/expire"),
    ("post", "/refunds"),
]


def error_of(answer) -> str:
    body = answer.get_json()
    assert set(body) >= {"error", "message"} and body["message"]
    return body["error"]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2tfdGVzdDo="}, {"Authorization": "Bearer"}],
)
def test_every_api_call_needs_the_bearer_key(client, method, path, headers):
    answer = getattr(client, method)(path, json=session_body(), headers={**headers, "Idempotency-Key": "k"})
    assert answer.status_code == 401
    assert error_of(answer) == "unauthorized"


def test_create_session_answers_session_id_and_payment_url(shopper):
    answer = shopper.create("tx_1")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["session_id"].startswith("cs_")
    assert body["payment_url"] == f"{PUBLIC_URL}/pay/{body['session_id']}"
    assert shopper.status("tx_1") == "pending"


def test_same_idempotency_key_gives_the_same_session(shopper):
    first = shopper.create("tx_1").get_json()
    again = shopper.create("tx_1")
    assert again.status_code == 200 and again.get_json() == first


def test_same_key_with_another_body_is_refused(shopper):
    shopper.create("tx_1")
    answer = shopper.create("tx_1", amount=2000)
    assert answer.status_code == 422 and error_of(answer) == "idempotency_key_reused"


def test_same_transaction_under_another_key_is_a_conflict(shopper):
    shopper.create("tx_1")
    answer = shopper.create("tx_1", key="other-key")
    assert answer.status_code == 409 and error_of(answer) == "transaction_exists"


def test_idempotency_key_is_required(client):
    answer = client.post("/create-session", json=session_body(), headers=AUTH)
    assert answer.status_code == 400 and error_of(answer) == "idempotency_key_required"


def test_too_long_idempotency_key_is_refused(shopper):
    answer = shopper.create("tx_1", key="k" * 256)
    assert answer.status_code == 400 and error_of(answer) == "invalid_idempotency_key"


@pytest.mark.parametrize(
    "overrides",
    [
        {"amount": 19.99}, {"amount": "1999"}, {"amount": True}, {"amount": 0}, {"amount": -5},
        {"amount": 10**13}, {"amount": None}, {"currency": "usd"}, {"currency": "US"}, {"currency": 840},
        {"callback_url": "ftp://x/y"}, {"return_url": "not a url"}, {"cancel_url": ""},
        {"expires_at": "tomorrow"}, {"expires_at": "2030-01-01T00:00:00"}, {"expires_at": 1893456000},
        {"transaction_id": ""}, {"transaction_id": 5}, {"transaction_id": "x" * 256},
        {"merchant_name": ["x"]},
    ],
)
def test_bad_create_session_bodies_are_422(client, overrides):
    answer = client.post(
        "/create-session", json=session_body(**overrides), headers={**AUTH, "Idempotency-Key": "k1"}
    )
    assert answer.status_code == 422 and error_of(answer) == "invalid_request"


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b"", b"\xff\xfe"])
def test_non_object_bodies_are_400(client, raw):
    answer = client.post(
        "/create-session", data=raw, content_type="application/json", headers={**AUTH, "Idempotency-Key": "k"}
    )
    assert answer.status_code == 400 and error_of(answer) == "invalid_json"


def test_missing_fields_are_422(client):
    answer = client.post("/create-session", json={"transaction_id": "t"}, headers={**AUTH, "Idempotency-Key": "k"})
    assert answer.status_code == 422


def test_status_of_unknown_transaction_is_404(client):
    answer = client.get("/status/nope", headers=AUTH)
    assert answer.status_code == 404 and error_of(answer) == "transaction_not_found"


def test_status_answers_the_contract_fields(shopper):
    shopper.create("tx_1", amount=2500, currency="EUR")
    body = shopper.client.get("/status/tx_1", headers=AUTH).get_json()
    assert {k: body[k] for k in ("transaction_id", "status", "amount", "currency")} == {
        "transaction_id": "tx_1", "status": "pending", "amount": 2500, "currency": "EUR",
    }


def test_session_past_expires_at_becomes_expired(shopper, runtime):
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    shopper.create("tx_1", expires_at=past)
    assert shopper.status("tx_1") == "expired"


def test_worker_pass_expires_overdue_sessions(shopper, runtime):
    soon = (datetime.now(UTC) + timedelta(milliseconds=50)).isoformat()
    shopper.create("tx_1", expires_at=soon)
    import time

    time.sleep(0.1)
    runtime.tick()
    from app.sandbox.models import PaymentSession

    with runtime.storage.session() as db:
        assert db.query(PaymentSession).one().status == "expired"


def test_expire_is_idempotent(shopper):
    session_id = shopper.session_id("tx_1")
    for _ in range(2):
        answer = shopper.client.post(f"/sessions/{session_id}/expire", headers=AUTH)
        assert answer.status_code == 200 and answer.get_json()["status"] == "expired"
    assert shopper.status("tx_1") == "expired"


def test_expire_after_payment_is_409_success(shopper):
    session_id = shopper.session_id("tx_1")
    assert shopper.pay(session_id).status_code == 303
    answer = shopper.client.post(f"/sessions/{session_id}/expire", headers=AUTH)
    assert answer.status_code == 409 and answer.get_json()["status"] == "success"
    assert shopper.status("tx_1") == "success"


def test_expire_unknown_session_is_404(client):
    answer = client.post("/sessions/cs_nope/expire", headers=AUTH)
    assert answer.status_code == 404 and error_of(answer) == "session_not_found"


def refund(client, amount, transaction_id="tx_1", key=None):
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return client.post("/refunds", json={"transaction_id": transaction_id, "amount": amount}, headers=headers)


@pytest.fixture
def paid(shopper):
    session_id = shopper.session_id("tx_1", amount=1000)
    assert shopper.pay(session_id).status_code == 303
    return shopper


def test_partial_then_full_refund(paid):
    first = refund(paid.client, 400)
    assert first.status_code == 200
    assert first.get_json()["status"] == "succeeded" and first.get_json()["refund_id"].startswith("re_")
    assert paid.status("tx_1") == "partially_refunded"
    assert refund(paid.client, 600).status_code == 200
    assert paid.status("tx_1") == "refunded"


def test_refunds_never_exceed_the_paid_amount(paid):
    assert refund(paid.client, 700).status_code == 200
    answer = refund(paid.client, 301)
    assert answer.status_code == 422 and error_of(answer) == "amount_exceeds_refundable"
    assert answer.get_json()["refundable_amount"] == 300
    assert refund(paid.client, 300).status_code == 200
    assert refund(paid.client, 1).status_code == 422


@pytest.mark.parametrize("amount", [0, -1, 1.5, "10", None, True])
def test_refund_amount_must_be_a_positive_integer(paid, amount):
    answer = refund(paid.client, amount)
    assert answer.status_code == 422 and error_of(answer) == "invalid_request"


def test_refund_of_unknown_transaction_is_404(client):
    answer = refund(client, 100, transaction_id="nope")
    assert answer.status_code == 404 and error_of(answer) == "transaction_not_found"


def test_refund_of_unpaid_payment_is_409(shopper):
    shopper.create("tx_1")
    answer = refund(shopper.client, 100)
    assert answer.status_code == 409 and error_of(answer) == "not_refundable"


def test_refunds_send_status_webhooks(paid, runtime):
    refund(paid.client, 400)
    refund(paid.client, 600)
    from app.sandbox.models import Delivery

    with runtime.storage.session() as db:
        sent = [d.event_status for d in db.query(Delivery).order_by(Delivery.id)]
    assert sent == ["success", "partially_refunded", "refunded"]


def test_refund_with_the_same_idempotency_key_is_not_repeated(paid):
    first = refund(paid.client, 100, key="r1").get_json()
    assert refund(paid.client, 100, key="r1").get_json() == first
    assert paid.client.get("/status/tx_1", headers=AUTH).get_json()["refunded_amount"] == 100
    assert refund(paid.client, 200, key="r1").status_code == 422


def test_the_same_key_sent_again_while_the_first_takes_the_amount_gets_that_refund(paid, monkeypatch):
    """The second copy looks for its key before the first copy commits, then finds nothing left
    to refund: it must answer with the first copy's refund, not 422."""
    first = refund(paid.client, 1000, key="r1").get_json()
    real_replay = sandbox_refunds._replay
    looks = []

    def not_yet_committed(db, key, fingerprint):
        looks.append(key)
        return None if len(looks) == 1 else real_replay(db, key, fingerprint)

    monkeypatch.setattr(sandbox_refunds, "_replay", not_yet_committed)
    again = refund(paid.client, 1000, key="r1")
    assert again.status_code == 200 and again.get_json() == first and len(looks) == 2
    assert paid.client.get("/status/tx_1", headers=AUTH).get_json()["refunded_amount"] == 1000


def test_unknown_path_and_wrong_method_answer_json(client):
    missing = client.get("/nope", headers=AUTH)
    assert missing.status_code == 404 and error_of(missing) == "not_found"
    wrong = client.get("/create-session", headers=AUTH)
    assert wrong.status_code == 405 and error_of(wrong) == "method_not_allowed"


def test_oversized_body_is_413_json(client):
    answer = client.post("/create-session", data=b"x" * 70_000, headers={**AUTH, "Idempotency-Key": "k"},
                         content_type="application/json")
    assert answer.status_code == 413 and "error" in answer.get_json()
