"""Contract section 3: POST /payment-callback."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import Order, Transaction, TransactionEvent, WebhookEvent, WebhookRejection
from tests import fulfillment_probe
from tests.conftest import place_order, post_webhook, sign, start_payment, status_event

OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LW5vdC1vdXJz"


@pytest.fixture
def pending(client, gateway):
    order = place_order(client)
    tx = start_payment(client, gateway, order["order_id"])
    return order, tx["transaction_id"]


def status_of(client, tx_id):
    return client.get(f"/check-payment-status/{tx_id}").get_json()["status"]


def test_success_webhook_pays_and_fulfills_once(app, client, pending):
    order, tx_id = pending
    response = post_webhook(client, status_event(tx_id, "success", 1999))
    assert response.status_code == 200
    assert status_of(client, tx_id) == "success"
    body = client.get(f"/api/orders/{order['order_id']}").get_json()
    assert body["status"] == "fulfilled" and body["paid_transaction_id"] == tx_id and body["fulfilled_at"]
    assert fulfillment_probe.calls == [(order["order_id"], tx_id)]


def _signed_variants():
    now = datetime.now(timezone.utc)
    return {
        "missing_signature": lambda raw, h: {k: v for k, v in h.items() if k != "webhook-signature"},
        "missing_id": lambda raw, h: {k: v for k, v in h.items() if k != "webhook-id"},
        "missing_timestamp": lambda raw, h: {k: v for k, v in h.items() if k != "webhook-timestamp"},
        "wrong_secret": lambda raw, h: sign(raw, msg_id=h["webhook-id"], secret=OTHER_SECRET)[1],
        "stale": lambda raw, h: sign(raw, msg_id=h["webhook-id"], timestamp=now - timedelta(seconds=301))[1],
        # 301 s ahead would come within the 300 s tolerance if the check ran a second late on a busy machine
        "future": lambda raw, h: sign(raw, msg_id=h["webhook-id"], timestamp=now + timedelta(seconds=330))[1],
        "garbage_signature": lambda raw, h: {**h, "webhook-signature": "v1,not-base64!! v2"},
        "wrong_version": lambda raw, h: {**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")},
        "other_id": lambda raw, h: {**h, "webhook-id": "msg_other"},
    }


@pytest.mark.parametrize("variant", sorted(_signed_variants()))
def test_bad_signatures_are_400_and_change_nothing(app, client, pending, variant):
    _, tx_id = pending
    raw, headers = sign(status_event(tx_id, "success", 1999))
    headers = _signed_variants()[variant](raw, headers)
    response = client.post("/payment-callback", data=raw, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_webhook"
    assert status_of(client, tx_id) == "pending"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookRejection)) == 1
        assert db.session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


def test_tampered_body_is_400(client, pending):
    _, tx_id = pending
    raw, headers = sign(status_event(tx_id, "failure", 1999))
    tampered = raw.replace(b'"failure"', b'"success"')
    assert client.post("/payment-callback", data=tampered, headers=headers).status_code == 400
    assert status_of(client, tx_id) == "pending"


def test_timestamp_within_tolerance_is_accepted(client, pending):
    _, tx_id = pending
    old = datetime.now(timezone.utc) - timedelta(seconds=240)
    assert post_webhook(client, status_event(tx_id, "failure", 1999), timestamp=old).status_code == 200
    assert status_of(client, tx_id) == "failure"


def test_rotated_secrets_several_signatures_in_one_header(make_app, database_url, pending, app):
    _, tx_id = pending
    raw, headers = sign(status_event(tx_id, "success", 1999))
    _, other = sign(raw, msg_id=headers["webhook-id"], secret=OTHER_SECRET)
    # The gateway signs with old and new secrets; we know only one of them.
    headers["webhook-signature"] = f"{other['webhook-signature']} {headers['webhook-signature']}"
    assert app.test_client().post("/payment-callback", data=raw, headers=headers).status_code == 200
    # And we can hold two secrets while rotating: the new one signs alone.
    rotated = make_app(PAYMENT_WEBHOOK_SECRET=f"{OTHER_SECRET} whsec_c2FuZGJveC1kZXZlbG9wbWVudC13ZWJob29rLXNlY3JldA==")
    raw2, headers2 = sign(status_event(tx_id, "success", 1999), secret=OTHER_SECRET)
    assert rotated.test_client().post("/payment-callback", data=raw2, headers=headers2).status_code == 200


def test_same_webhook_id_again_changes_nothing(app, client, pending):
    order, tx_id = pending
    raw, headers = sign(status_event(tx_id, "success", 1999))
    assert client.post("/payment-callback", data=raw, headers=headers).status_code == 200
    again = client.post("/payment-callback", data=raw, headers=headers)
    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"
    assert len(fulfillment_probe.calls) == 1


def test_the_same_webhook_id_again_changes_nothing_even_with_another_status(app, client, pending):
    """The same webhook-id is the same delivery, whatever its (validly signed) body says: a
    success re-sent under the id of a failure already received is not applied (failure ->
    success otherwise would be)."""
    order, tx_id = pending
    first = post_webhook(client, status_event(tx_id, "failure", 1999), msg_id="msg_same_delivery")
    assert first.status_code == 200 and status_of(client, tx_id) == "failure"
    again = post_webhook(client, status_event(tx_id, "success", 1999), msg_id="msg_same_delivery")
    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"
    assert status_of(client, tx_id) == "failure"
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "open"
    assert fulfillment_probe.calls == []


@pytest.mark.parametrize("amount", [1999, 10 ** 40])
def test_unknown_transaction_is_acknowledged(app, client, amount):
    response = post_webhook(client, status_event("txn_unknown", "success", amount))
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "unknown_transaction"


def test_a_delivery_for_an_unknown_transaction_is_recorded_and_its_repeat_is_a_duplicate(app, client):
    raw, headers = sign(status_event("txn_unknown_twice", "success", 1999))
    assert client.post("/payment-callback", data=raw, headers=headers).get_json()["outcome"] == "unknown_transaction"
    with app.app_context():
        stored = db.session.scalars(select(WebhookEvent).where(WebhookEvent.webhook_id == headers["webhook-id"])).all()
        assert [(event.transaction_id, event.outcome) for event in stored] == [("txn_unknown_twice",
                                                                                 "unknown_transaction")]
    again = client.post("/payment-callback", data=raw, headers=headers)
    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"


def test_refused_move_is_acknowledged_and_recorded(app, client, pending):
    _, tx_id = pending
    post_webhook(client, status_event(tx_id, "success", 1999))
    late = post_webhook(client, status_event(tx_id, "failure", 1999))
    assert late.status_code == 200 and late.get_json()["outcome"] == "refused"
    assert status_of(client, tx_id) == "success"
    back = post_webhook(client, status_event(tx_id, "pending", 1999))
    assert back.status_code == 200 and status_of(client, tx_id) == "success"
    with app.app_context():
        refused = db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.outcome == "refused")).all()
        assert {(e.from_status, e.to_status) for e in refused} == {("success", "failure"), ("success", "pending")}


# A currency no database could store (a lone surrogate, a NUL) is other money too, not a 500.
@pytest.mark.parametrize("amount,currency", [(1998, "USD"), (1999, "EUR"), (None, "USD"), (1999, "\ud800"),
                                             (1999, "U\x00D")])
def test_success_with_other_money_is_flagged_not_applied(app, client, pending, amount, currency):
    order, tx_id = pending
    event = status_event(tx_id, "success", 1999)
    event["data"]["amount"], event["data"]["currency"] = amount, currency
    response = post_webhook(client, event)
    assert response.status_code == 200 and response.get_json()["outcome"] == "amount_mismatch"
    assert status_of(client, tx_id) == "pending"
    assert fulfillment_probe.calls == []
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review and tx.review_reason == "amount_mismatch"
        assert db.session.get(Order, order["order_id"]).status == "open"


@pytest.mark.parametrize("before", ["failure", "expired", "cancelled"])
def test_success_after_a_final_status_is_applied(app, client, pending, before):
    order, tx_id = pending
    post_webhook(client, status_event(tx_id, before, 1999))
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    assert status_of(client, tx_id) == "success"
    assert len(fulfillment_probe.calls) == 1
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review == (before != "failure")


def test_second_successful_transaction_is_flagged_and_not_fulfilled_again(app, client, gateway):
    order = place_order(client)
    first = start_payment(client, gateway, order["order_id"])["transaction_id"]
    post_webhook(client, status_event(first, "expired", 1999))
    second = start_payment(client, gateway, order["order_id"])["transaction_id"]
    assert first != second
    post_webhook(client, status_event(second, "success", 1999))
    post_webhook(client, status_event(first, "success", 1999))  # the shopper paid on the old page too
    assert status_of(client, first) == status_of(client, second) == "success"
    assert fulfillment_probe.calls == [(order["order_id"], second)]
    with app.app_context():
        tx = db.session.get(Transaction, first)
        assert tx.needs_review and tx.review_reason == "duplicate_payment_refund_owed"
        assert db.session.get(Order, order["order_id"]).paid_transaction_id == second


def test_a_second_payment_for_an_order_paid_but_not_yet_fulfilled_is_flagged_too(app, client, gateway):
    """The order is paid but its handler failed (so it waits, paid, for a retry): a success for
    another payment of it must not take the order over, nor touch its claim."""
    order = place_order(client)
    first = start_payment(client, gateway, order["order_id"])["transaction_id"]
    post_webhook(client, status_event(first, "expired", 1999))
    second = start_payment(client, gateway, order["order_id"])["transaction_id"]
    fulfillment_probe.reset(fail_times=1)
    post_webhook(client, status_event(second, "success", 1999))
    with app.app_context():
        paid = db.session.get(Order, order["order_id"])
        assert paid.status == "paid" and paid.paid_transaction_id == second
        before = (paid.paid_at, paid.fulfillment_attempts, paid.fulfillment_claimed_at)

    post_webhook(client, status_event(first, "success", 1999))

    with app.app_context():
        paid = db.session.get(Order, order["order_id"])
        assert (paid.status, paid.paid_transaction_id) == ("paid", second)
        assert (paid.paid_at, paid.fulfillment_attempts, paid.fulfillment_claimed_at) == before
        tx = db.session.get(Transaction, first)
        assert tx.needs_review and tx.review_reason == "duplicate_payment_refund_owed"
    assert fulfillment_probe.calls == []  # the first run failed; nothing ran for the duplicate


def test_failing_handler_leaves_order_paid_and_can_be_retried(app, client, pending):
    from app.services.fulfillment import fulfill_order, orders_awaiting_fulfillment

    order, tx_id = pending
    fulfillment_probe.reset(fail_times=1)
    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "paid"
    with app.app_context():
        errors = db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.kind == "fulfillment", TransactionEvent.outcome == "error")).all()
        assert "warehouse is down" in errors[0].summary
        assert orders_awaiting_fulfillment() == [order["order_id"]]
        assert fulfill_order(order["order_id"]) is True
        assert fulfill_order(order["order_id"]) is False  # never again once it returned
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "fulfilled"
    assert fulfillment_probe.calls == [(order["order_id"], tx_id)]


def test_non_json_body_with_valid_signature_is_rejected(client, pending):
    raw, headers = sign(b"not json at all")
    assert client.post("/payment-callback", data=raw, headers=headers).status_code == 400


@pytest.mark.parametrize("depth", [600, 30000])
def test_deeply_nested_body_with_valid_signature_is_rejected_not_a_fault(app, client, pending, depth, caplog):
    _, tx_id = pending
    raw, headers = sign(b'{"type": "payment.status_changed", "data": ' + b"[" * depth + b"]" * depth + b"}")
    response = client.post("/payment-callback", data=raw, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["reason"] == "malformed_body"
    assert "unhandled fault" not in caplog.text
    assert status_of(client, tx_id) == "pending"


def test_every_webhook_is_on_the_timeline(app, client, pending):
    _, tx_id = pending
    post_webhook(client, status_event(tx_id, "success", 1999))
    with app.app_context():
        kinds = [e.kind for e in db.session.scalars(
            select(TransactionEvent).where(TransactionEvent.transaction_id == tx_id).order_by(TransactionEvent.id))]
    assert kinds == ["created", "gateway", "webhook", "status", "fulfillment"]


@pytest.mark.parametrize("field,value,outcome", [
    ("currency", "USDX", "amount_mismatch"),
    ("currency", "US\u0000", "amount_mismatch"),
    ("amount", 10 ** 40, "amount_mismatch"),  # past any money column: no overflow, a mismatch
    ("amount", -1999, "amount_mismatch"),
    ("transaction_id", "txn_" + "x" * 60, "unknown_transaction"),
    ("type", "payment." + "x" * 100, "ignored"),
])
def test_oversized_or_odd_webhook_fields_are_handled_not_500(app, client, pending, field, value, outcome):
    _, tx_id = pending
    event = status_event(tx_id, "success", 1999)
    if field == "type":
        event["type"] = value
    else:
        event["data"][field] = value
    response = post_webhook(client, event)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == outcome
    assert status_of(client, tx_id) == "pending"


def test_webhook_id_with_control_characters_is_rejected(client, pending):
    _, tx_id = pending
    raw, headers = sign(status_event(tx_id, "success", 1999), msg_id="msg_\u0001bad")
    assert client.post("/payment-callback", data=raw, headers=headers).status_code == 400


def test_a_webhook_id_longer_than_the_column_is_accepted_and_deduplicated(app, client, pending):
    """Standard Webhooks sets no length for the id: a long one is kept as its digest."""
    order, tx_id = pending
    long_id = "msg_" + "x" * 600
    first = post_webhook(client, status_event(tx_id, "success", 1999), msg_id=long_id)
    again = post_webhook(client, status_event(tx_id, "success", 1999), msg_id=long_id)
    other = post_webhook(client, status_event(tx_id, "success", 1999), msg_id=long_id + "y")
    assert [r.get_json()["outcome"] for r in (first, again, other)] == ["applied", "duplicate", "noop"]
    assert status_of(client, tx_id) == "success" and fulfillment_probe.calls == [(order["order_id"], tx_id)]
    with app.app_context():
        stored = db.session.scalars(select(WebhookEvent.webhook_id).where(WebhookEvent.transaction_id == tx_id)).all()
    assert len(stored) == 2 and all(s.startswith("sha256:") and len(s) <= 255 for s in stored)


def test_a_refused_delivery_from_a_long_forwarded_address_is_400_not_500(make_app, database_url):
    # The address recorded with a refused delivery is the proxy's X-Forwarded-For entry, text
    # the client may have written; the column holds 64 characters, and PostgreSQL refused more.
    from app.extensions import db
    from app.models import WebhookRejection
    from tests.conftest import prepare_database

    app = make_app(PROXY_FIX_HOPS=1)
    prepare_database(app, database_url)
    response = app.test_client().post("/payment-callback", data=b"{}", headers={
        "X-Forwarded-For": "a" * 300, "webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_webhook"
    with app.app_context():
        assert db.session.query(WebhookRejection).one().remote_addr == "a" * 64
