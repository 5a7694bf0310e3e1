"""A success delivery's one-statement route (PostgreSQL only: SQLite has no data-modifying CTEs).

It must leave exactly the rows the general route leaves, or nothing at all, whatever it meets.
"""

import json
from datetime import datetime

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.extensions import db, socketio
from app.models import Order, Transaction, TransactionEvent, WebhookEvent
from app.services import one_statement
from app.services.status_moves import apply_reported_success
from tests import fulfillment_probe
from tests.conftest import place_order, post_webhook, probed_app, sign, start_payment, status_event


@pytest.fixture
def pg_app(make_pg_app, postgres_url):
    return probed_app(make_pg_app, postgres_url)


@pytest.fixture
def routes_taken(monkeypatch):
    """Whether each one-statement attempt wrote (its first column: the order paid, or how many
    rows were changed; False when it failed, and so wrote nothing)."""
    taken, real_run = [], one_statement.run

    def run(statement, params):
        try:
            row = real_run(statement, params)
        except Exception:
            taken.append(False)
            raise
        taken.append(row[0] not in (None, 0))
        return row

    monkeypatch.setattr(one_statement, "run", run)
    return taken


def _counted(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _as_written(value, names: dict):
    """A column's value with this payment's own ids named generically and times reduced to set/unset."""
    if isinstance(value, datetime):
        return "set"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        for real, generic in names.items():
            value = value.replace(real, generic)
    return value


def _written(app, tx_id: str, order_id: str, msg_id: str) -> dict:
    """Every row a delivery wrote or changed, column by column, comparable across payments."""
    names = {tx_id: "TX", order_id: "ORDER", msg_id: "MSG"}

    def row(model, instance, skip=("id",)):
        return {c.name: _as_written(getattr(instance, c.key), names)
                for c in model.__table__.columns if c.name not in skip}

    with app.app_context():
        lines = db.session.scalars(select(TransactionEvent).where(TransactionEvent.transaction_id == tx_id)
                                   .order_by(TransactionEvent.id)).all()
        return {
            "transaction": row(Transaction, db.session.get(Transaction, tx_id)),
            "order": row(Order, db.session.get(Order, order_id), skip=("id", "access_code", "total", "currency")),
            "timeline": [row(TransactionEvent, line) for line in lines],
            "deliveries": [row(WebhookEvent, hook) for hook in db.session.scalars(
                select(WebhookEvent).where(WebhookEvent.transaction_id == tx_id))],
        }


def _deliver_success(app, client, gateway, n: int, attempts: list) -> tuple[dict, dict, list]:
    """A new order paid by one success delivery: (its response, the rows, the pushes its room got);
    ``attempts`` keeps only the delivery's own one-statement attempts."""
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    socket = socketio.test_client(app)
    socket.emit("join", {"transaction_id": tx_id})
    socket.get_received()
    attempts.clear()
    msg_id = f"msg_route_{n}"
    response = post_webhook(client, status_event(tx_id, "success", 1999), msg_id=msg_id)
    pushes = [m["args"][0]["status"] for m in socket.get_received() if m["name"] == "payment_status_update"]
    socket.disconnect()
    assert fulfillment_probe.calls[-1] == (order_id, tx_id)
    return response.get_json(), _written(app, tx_id, order_id, msg_id), pushes


def test_a_success_delivery_leaves_the_same_rows_by_either_route(pg_app, gateway, monkeypatch, routes_taken):
    client = pg_app.test_client()
    moves = {"name": "checkout_status_moves_total",
             "labels": {"source": "webhook", "to_status": "success", "outcome": "applied"}}
    applied = {"name": "checkout_webhooks_total", "labels": {"outcome": "applied"}}
    before = _counted(**moves), _counted(**applied)
    one = _deliver_success(pg_app, client, gateway, 1, routes_taken)
    assert routes_taken == [True, True]  # the move, then the finish
    assert (_counted(**moves), _counted(**applied)) == (before[0] + 1, before[1] + 1)

    monkeypatch.setattr(one_statement, "on_postgresql", lambda: False)  # the general route, as on SQLite
    general = _deliver_success(pg_app, client, gateway, 2, routes_taken)
    assert routes_taken == []
    assert one == general
    assert one[0] == {"received": True, "outcome": "applied"}
    assert one[2] == ["success"]
    written = one[1]
    assert (written["transaction"]["status"], written["order"]["status"]) == ("success", "fulfilled")
    assert [(line["kind"], line["outcome"]) for line in written["timeline"]][-3:] == [
        ("webhook", "received"), ("status", "applied"), ("fulfillment", "ok")]


def test_an_order_paid_already_leaves_no_trace_of_the_one_statement_attempt(pg_app, gateway, pg_admin,
                                                                            routes_taken):
    """The payment moves but its order is not open: the statement's guard undoes all of it, and
    the general route then applies the success and flags the second payment for a refund."""
    client = pg_app.test_client()
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    pg_admin.exec_driver_sql("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
    routes_taken.clear()

    response = post_webhook(client, status_event(tx_id, "success", 1999))
    assert response.status_code == 200 and response.get_json()["outcome"] == "applied"
    assert routes_taken == [False]  # tried, wrote nothing
    with pg_app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert (tx.status, tx.needs_review, tx.review_reason) == ("success", True, "duplicate_payment_refund_owed")
        moves = db.session.scalars(select(TransactionEvent.outcome).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "status")).all()
        assert moves == ["applied"]
        assert db.session.scalars(select(WebhookEvent.outcome)).all() == ["applied"]
    assert fulfillment_probe.calls == []


def _attempt(app, tx_id: str, amount, webhook_id: str = "msg_direct") -> object:
    with app.test_request_context():
        return apply_reported_success(
            tx_id, amount, "USD", source="webhook", detail={}, lines=[], extra=WebhookEvent.__table__,
            extra_row={"gateway": "sandbox", "webhook_id": webhook_id, "event_type": "payment.status_changed",
                       "outcome": "applied", "received_at": datetime(2026, 1, 1)})


@pytest.mark.parametrize("case", ["other_amount", "webhook_id_taken", "refund_reported_first", "not_pending"])
def test_what_the_one_statement_does_not_cover_it_leaves_untouched(pg_app, gateway, pg_admin, routes_taken, case):
    """Each miss writes nothing and is then handled by the general route as before."""
    client = pg_app.test_client()
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    amount, msg_id = 1999, "msg_first_delivery"
    if case == "other_amount":
        amount = 1998
    elif case == "webhook_id_taken":
        pg_admin.exec_driver_sql(
            "INSERT INTO webhook_events (gateway, webhook_id, event_type, outcome, received_at) "
            "VALUES ('sandbox', %s, 'payment.status_changed', 'unknown_transaction', now())", (msg_id,))
    elif case == "refund_reported_first":
        pg_admin.exec_driver_sql("UPDATE transactions SET refund_reported = 'refunded' WHERE id = %s", (tx_id,))
    else:
        pg_admin.exec_driver_sql("UPDATE transactions SET status = 'failure' WHERE id = %s", (tx_id,))
    before = _written(pg_app, tx_id, order_id, msg_id)

    if case != "not_pending":  # the general route would act on it: look at the attempt alone
        assert _attempt(pg_app, tx_id, amount, webhook_id=msg_id) is None
        assert _written(pg_app, tx_id, order_id, msg_id) == before
        assert routes_taken[-1] is False

    attempts_before = len(routes_taken)
    response = post_webhook(client, status_event(tx_id, "success", amount), msg_id=msg_id)
    assert response.status_code == 200
    assert routes_taken[attempts_before] is False  # the delivery's own attempt wrote nothing either
    expected = {"other_amount": "amount_mismatch", "webhook_id_taken": "duplicate",
                "refund_reported_first": "applied", "not_pending": "applied"}[case]
    assert response.get_json()["outcome"] == expected
    with pg_app.app_context():
        status = db.session.get(Transaction, tx_id).status
    assert status == {"other_amount": "pending", "webhook_id_taken": "pending",
                      "refund_reported_first": "refunded", "not_pending": "success"}[case]


def test_an_initiation_saves_its_gateway_page_alike_by_either_route(pg_app, gateway, monkeypatch, routes_taken):
    """The page's save and its timeline line: one statement on PostgreSQL, or the session's
    UPDATE and commit; the same rows either way."""
    client = pg_app.test_client()

    def initiate() -> dict:
        order_id = place_order(client)["order_id"]
        routes_taken.clear()
        tx_id = start_payment(client, gateway, order_id)["transaction_id"]
        with pg_app.app_context():
            assert db.session.get(Transaction, tx_id).payment_url.endswith(f"cs_{tx_id}")
        return _written(pg_app, tx_id, order_id, "no webhook")

    one = initiate()
    assert routes_taken == [True]
    monkeypatch.setattr(one_statement, "on_postgresql", lambda: False)
    general = initiate()
    assert routes_taken == []
    assert one == general
    assert [line["summary"] for line in one["timeline"]][-1] == "gateway session opened"


@pytest.mark.parametrize("amount", [1999.0, True, "1999"])
def test_money_of_another_type_is_left_to_the_general_route(pg_app, gateway, routes_taken, amount):
    """SQL would cast 1999.0 or '1999' to the integer 1999 and call it a match; Python's
    comparison in the general route calls it a mismatch. The statement is not even tried."""
    client = pg_app.test_client()
    tx_id = start_payment(client, gateway, place_order(client)["order_id"])["transaction_id"]
    routes_taken.clear()
    assert _attempt(pg_app, tx_id, amount) is None
    assert routes_taken == []
    with pg_app.app_context():
        assert db.session.get(Transaction, tx_id).status == "pending"


def test_a_value_too_long_for_its_column_fails_whole_instead_of_being_cut(pg_app, gateway, routes_taken):
    """An explicit cast to VARCHAR(255) would cut a 300-character webhook-id short and store it:
    the statement must fail as a plain INSERT does, and write nothing."""
    client = pg_app.test_client()
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    before = _written(pg_app, tx_id, order_id, "m" * 300)
    assert _attempt(pg_app, tx_id, 1999, webhook_id="m" * 300) is None
    assert _written(pg_app, tx_id, order_id, "m" * 300) == before


@pytest.mark.parametrize("committed", [True, False])
def test_a_connection_lost_under_the_statement(pg_app, gateway, monkeypatch, committed):
    """The answer to the success statement never comes back. If it had committed, the delivery
    goes on as usual (push, handler now, not after the claim's lease); if not, it answers 503
    with nothing written, and the gateway's next delivery applies it."""
    client = pg_app.test_client()
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    real_run, lost = one_statement.run, []

    def run(statement, params):
        if "reported_amount" in params and not lost:  # the success statement, once
            lost.append(True)
            if committed:
                real_run(statement, params)
            raise OperationalError("the success statement", {},
                                   psycopg.OperationalError("server closed the connection"))
        return real_run(statement, params)

    monkeypatch.setattr(one_statement, "run", run)
    socket = socketio.test_client(pg_app)
    socket.emit("join", {"transaction_id": tx_id})
    socket.get_received()
    raw_headers = sign(status_event(tx_id, "success", 1999))
    response = client.post("/payment-callback", data=raw_headers[0], headers=raw_headers[1])
    if not committed:
        assert response.status_code == 503
        with pg_app.app_context():
            assert db.session.get(Transaction, tx_id).status == "pending"
        assert fulfillment_probe.calls == []
        response = client.post("/payment-callback", data=raw_headers[0], headers=raw_headers[1])  # delivered again
    assert (response.status_code, response.get_json()["outcome"]) == (200, "applied")
    assert fulfillment_probe.calls == [(order_id, tx_id)]
    assert [m["args"][0]["status"] for m in socket.get_received() if m["name"] == "payment_status_update"] == [
        "success"]
    with pg_app.app_context():
        assert db.session.get(Order, order_id).status == "fulfilled"
        assert db.session.scalars(select(TransactionEvent.outcome).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "status")).all() == ["applied"]
