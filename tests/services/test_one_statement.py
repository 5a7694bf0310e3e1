"""A success delivery's one-statement route (PostgreSQL only: SQLite has no data-modifying CTEs).

It must leave exactly the rows the general route leaves, or nothing at all, whatever it meets.
"""

import json
import threading
import time
from contextlib import contextmanager
from datetime import datetime

import psycopg
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.extensions import db, socketio
from app.models import Order, Transaction, TransactionEvent, WebhookEvent
from app.models.clock import utcnow
from app.services import one_statement, timeline
from app.services import group_writes
from app.services.group_writes import WriterInterrupted
from app.services.fulfillment import _FINISH
from app.services.status_moves import _Success, _write_successes, apply_reported_success
from tests import fulfillment_probe
from tests.conftest import place_order, post_webhook, probed_app, sign, start_payment, status_event


@pytest.fixture
def pg_app(make_pg_app, postgres_url):
    return probed_app(make_pg_app, postgres_url)


@pytest.fixture
def routes_taken(monkeypatch):
    """Whether each one-statement attempt wrote (a row returned: the order paid, finished or its
    page saved; False when it failed, and so wrote nothing)."""
    taken, real_run = [], one_statement.run_all

    def run_all(statement, params, **options):
        try:
            rows = real_run(statement, params, **options)
        except Exception:
            taken.append(False)
            raise
        taken.append(bool(rows))
        return rows

    monkeypatch.setattr(one_statement, "run_all", run_all)
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
            # SQLAlchemy writes Python's None to a JSON column as JSON null, and reads both back as None
            "sql_null_json": db.session.execute(text(
                "SELECT (SELECT count(*) FROM transaction_events WHERE transaction_id = :t AND detail IS NULL) "
                "+ (SELECT count(*) FROM webhook_events WHERE transaction_id = :t AND payload IS NULL)"),
                {"t": tx_id}).scalar(),
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
            tx_id, amount, "USD", source="webhook", detail={}, lines=[],
            delivery={"gateway": "sandbox", "webhook_id": webhook_id, "event_type": "payment.status_changed",
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


def _lost(kind: str) -> Exception:
    """What the caller of a statement whose answer never came raises."""
    if kind == "connection":
        return OperationalError("the statement", {}, psycopg.OperationalError("server closed the connection"))
    return WriterInterrupted("the statement's writer stopped: GreenletExit")  # another request wrote for it


@pytest.mark.parametrize("kind", ["connection", "writer"])
@pytest.mark.parametrize("committed", [True, False])
def test_a_connection_lost_under_the_statement(pg_app, gateway, monkeypatch, committed, kind):
    """The answer to the success statement never comes back (the connection broke, or the request
    writing the shared statement was stopped). If it had committed, the delivery goes on as usual
    (push, handler now, not after the claim's lease); if not, it answers 503 with nothing
    written, and the gateway's next delivery applies it."""
    client = pg_app.test_client()
    order_id = place_order(client)["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    real_run, lost = one_statement.run_all, []

    def run_all(statement, params, **options):
        if '"tx_id"' in params["items"] and not lost:  # the success statement, once
            lost.append(True)
            if committed:
                real_run(statement, params, **options)
            raise _lost(kind)
        return real_run(statement, params, **options)

    monkeypatch.setattr(one_statement, "run_all", run_all)
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


# Group commit: the same statements carry several deliveries (or finishes) at once.

def _payment(client, gateway) -> tuple[str, str]:
    order_id = place_order(client)["order_id"]
    return order_id, start_payment(client, gateway, order_id)["transaction_id"]


def _success_item(tx_id: str, webhook_id: str) -> _Success:
    return _Success(tx_id, 1999, "USD", utcnow(), [
        timeline.line(tx_id, "webhook", "webhook", "webhook: gateway says success", outcome="received"),
        timeline.line(tx_id, "status", "webhook", "status pending -> success", outcome="applied",
                      from_status="pending", to_status="success")],
        {"gateway": "sandbox", "webhook_id": webhook_id, "transaction_id": tx_id,
         "event_type": "payment.status_changed", "status": "success", "amount": 1999, "currency": "USD",
         "outcome": "applied", "payload": {"n": 1}, "received_at": utcnow()})


def test_one_item_that_cannot_be_written_leaves_the_others_of_its_statement_written(
        pg_app, gateway, pg_admin, routes_taken):
    """The statement fails whole (a payment whose order is paid already trips the guard; a
    webhook-id too long for its column): its items are then written one by one, so each of
    the others is written and only the bad ones are left to the general route."""
    client = pg_app.test_client()
    payments = [_payment(client, gateway) for _ in range(4)]
    pg_admin.exec_driver_sql("UPDATE orders SET status = 'paid' WHERE id = %s", (payments[1][0],))
    items = [_success_item(tx_id, f"msg_batch_{n}") for n, (_, tx_id) in enumerate(payments)]
    items[3] = _success_item(payments[3][1], "m" * 300)
    routes_taken.clear()
    with pg_app.app_context():
        paid = _write_successes(items)
    assert paid == [payments[0][0], None, payments[2][0], None]
    assert routes_taken == [False, True, False, True, False]  # all four, then each alone
    with pg_app.app_context():
        statuses = [db.session.get(Transaction, tx_id).status for _, tx_id in payments]
        assert statuses == ["success", "pending", "success", "pending"]
        orders = [db.session.get(Order, order_id) for order_id, _ in payments]
        assert [(order.status, order.paid_transaction_id) for order in orders] == [
            ("paid", payments[0][1]), ("paid", None), ("paid", payments[2][1]), ("open", None)]
        assert db.session.scalars(select(WebhookEvent.webhook_id).order_by(WebhookEvent.webhook_id)).all() == [
            "msg_batch_0", "msg_batch_2"]
        for _, tx_id in payments:
            kinds = db.session.scalars(select(TransactionEvent.outcome).where(
                TransactionEvent.transaction_id == tx_id, TransactionEvent.source == "webhook")
                .order_by(TransactionEvent.id)).all()
            assert kinds == (["received", "applied"] if tx_id in (payments[0][1], payments[2][1]) else [])


def test_finishes_in_one_statement_finish_only_the_orders_whose_claim_holds(pg_app, gateway, pg_admin):
    client = pg_app.test_client()
    payments = [_payment(client, gateway) for _ in range(3)]
    claimed = datetime(2026, 1, 1, 12, 0, 0, 123456)
    for order_id, tx_id in payments:
        pg_admin.exec_driver_sql("UPDATE orders SET status = 'paid', paid_transaction_id = %s, "
                                 "fulfillment_claimed_at = %s WHERE id = %s", (tx_id, claimed, order_id))
    pg_admin.exec_driver_sql("UPDATE orders SET fulfillment_claimed_at = now() WHERE id = %s", (payments[1][0],))
    done = utcnow()
    items = [one_statement._Update({"order_id": order_id, "claimed_at": claimed, "done": done},
                                   [timeline.line(tx_id, "fulfillment", "webhook", "order fulfilled", outcome="ok")])
             for order_id, tx_id in payments]
    with pg_app.app_context():
        assert one_statement._write_updates(_FINISH, items) == [1, 0, 1]  # the second's claim was taken over
        orders = [db.session.get(Order, order_id) for order_id, _ in payments]
        assert [(order.status, order.fulfilled_at) for order in orders] == [
            ("fulfilled", done), ("paid", None), ("fulfilled", done)]
        assert [db.session.scalars(select(TransactionEvent.summary).where(TransactionEvent.transaction_id == tx_id,
                                                                          TransactionEvent.kind == "fulfillment"))
                .all() for _, tx_id in payments] == [["order fulfilled"], [], ["order fulfilled"]]


def _statements_failing(monkeypatch, failures: dict) -> list:
    """``one_statement.run_all`` raising ``failures[k]`` at its k-th call (counting from 1); the
    number of success items each call carried."""
    real_run, calls = one_statement.run_all, []

    def run_all(statement, params, **options):
        calls.append(params["items"].count('"tx_id"'))
        if len(calls) in failures:
            raise failures[len(calls)]
        return real_run(statement, params, **options)

    monkeypatch.setattr(one_statement, "run_all", run_all)
    return calls


def test_a_statement_ended_by_a_deadlock_is_written_item_by_item(pg_app, gateway, monkeypatch):
    """Another process's statement locking the same payments in the other order: PostgreSQL ends
    one of the two, which wrote nothing; its items are then written one by one."""
    client = pg_app.test_client()
    payments = [_payment(client, gateway) for _ in range(2)]
    calls = _statements_failing(monkeypatch, {1: OperationalError(
        "the success statement", {}, psycopg.errors.DeadlockDetected("deadlock detected"))})
    with pg_app.app_context():
        paid = _write_successes([_success_item(tx_id, f"msg_dl_{tx_id}") for _, tx_id in payments])
    assert paid == [order_id for order_id, _ in payments]
    assert calls == [2, 1, 1]


def test_deliveries_that_queue_behind_a_statement_share_the_next_and_each_is_written_as_alone(
        pg_app, gateway, monkeypatch, routes_taken):
    """Eight deliveries for eight payments arrive while a ninth's statement is out: they go
    out as one statement, and each payment, order, timeline and delivery row is what a
    delivery alone writes; each order's handler runs once, and each is finished."""
    monkeypatch.setattr(group_writes, "STALLED_AFTER", 60.0)  # the first statement is held on purpose
    client = pg_app.test_client()
    payments = [_payment(client, gateway) for _ in range(9)]
    alone = _deliver_success(pg_app, client, gateway, 0, [])  # for comparison: one delivery by itself
    fulfillment_probe.reset()
    held, release, real_run, sizes = threading.Event(), threading.Event(), one_statement.run_all, []

    def run_all(statement, params, **options):
        sizes.append(params["items"].count('"tx_id"'))  # success items (a finish's have none)
        if not held.is_set():
            held.set()
            assert release.wait(20)
        return real_run(statement, params, **options)

    monkeypatch.setattr(one_statement, "run_all", run_all)
    signed = [sign(status_event(tx_id, "success", 1999), msg_id=f"msg_queued_{n}") for n, (_, tx_id) in
              enumerate(payments)]
    answers = [None] * len(payments)

    def deliver(n):
        answers[n] = pg_app.test_client().post("/payment-callback", data=signed[n][0], headers=signed[n][1])

    first = threading.Thread(target=deliver, args=(0,))
    first.start()
    assert held.wait(20)
    rest = [threading.Thread(target=deliver, args=(n,)) for n in range(1, len(payments))]
    for thread in rest:
        thread.start()
    writer = pg_app.extensions["group_writes"][("successes", None)]
    for _ in range(2000):
        with writer._lock:
            if len(writer._waiting) == len(rest):
                break
        time.sleep(0.005)
    routes_taken.clear()
    release.set()
    for thread in [first, *rest]:
        thread.join(30)
    assert [(a.status_code, a.get_json()["outcome"]) for a in answers] == [(200, "applied")] * len(payments)
    assert sorted(fulfillment_probe.calls) == sorted(payments)
    assert [size for size in sizes if size] == [1, 8]  # the eight that waited went out together
    for n, (order_id, tx_id) in enumerate(payments):
        assert _written(pg_app, tx_id, order_id, f"msg_queued_{n}") == alone[1]


@pytest.mark.parametrize("committed", [True, False])
def test_a_finish_whose_shared_statement_was_not_answered_is_written_once(pg_app, gateway, monkeypatch, committed):
    """The request writing the finishing statement was stopped before its answer: this order's
    finish is written again on a fresh statement (or recognised as written), its handler not run
    again, and the delivery answers as usual."""
    client = pg_app.test_client()
    order_id, tx_id = _payment(client, gateway)
    real_run, stopped = one_statement.run_all, []

    def run_all(statement, params, **options):
        if '"claimed_at"' in params["items"] and not stopped:  # the finish, once
            stopped.append(True)
            if committed:
                real_run(statement, params, **options)
            raise _lost("writer")
        return real_run(statement, params, **options)

    monkeypatch.setattr(one_statement, "run_all", run_all)
    response = post_webhook(client, status_event(tx_id, "success", 1999))
    assert (response.status_code, response.get_json()["outcome"]) == (200, "applied")
    assert fulfillment_probe.calls == [(order_id, tx_id)]
    with pg_app.app_context():
        assert db.session.get(Order, order_id).status == "fulfilled"
        assert db.session.scalars(select(TransactionEvent.summary).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "fulfillment")).all() == [
            "order fulfilled"]


@pytest.mark.parametrize("case", ["two_orders_paid_already", "three_payments_of_one_order"])
def test_payments_that_would_pay_no_order_of_their_own_undo_their_statement(pg_app, gateway, pg_admin, case):
    """Every payment a statement moves must pay an order of its own. Two orders paid already by
    other payments, or three pending payments of one order, in one statement: it is undone, and
    written item by item, so no payment is recorded as paying an order it did not pay; those
    left over go to the general route (which applies them and flags a refund owed)."""
    client = pg_app.test_client()
    if case == "two_orders_paid_already":
        payments = [_payment(client, gateway) for _ in range(2)]
        for order_id, _ in payments:
            pg_admin.exec_driver_sql("UPDATE orders SET status = 'fulfilled' WHERE id = %s", (order_id,))
        expected = [None, None]
    else:
        order_id, first = _payment(client, gateway)
        others = []
        for _ in range(2):  # more pending payments of the same order, as expired initiations leave
            pg_admin.exec_driver_sql("UPDATE transactions SET payment_url = NULL, gateway_session_id = NULL, "
                                     "expires_at = now() - interval '1 minute' WHERE order_id = %s", (order_id,))
            others.append(start_payment(client, gateway, order_id)["transaction_id"])
        payments = [(order_id, tx_id) for tx_id in [first, *others]]
        expected = [order_id, None, None]
    assert len({tx_id for _, tx_id in payments}) == len(payments)
    with pg_app.app_context():
        paid = _write_successes([_success_item(tx_id, f"msg_{tx_id}") for _, tx_id in payments])
    assert paid == expected
    with pg_app.app_context():
        statuses = [db.session.get(Transaction, tx_id).status for _, tx_id in payments]
        assert statuses == ["success" if order else "pending" for order in expected]


def test_an_item_that_fails_alone_fails_only_its_own_caller(pg_app, gateway, monkeypatch):
    """The statement is refused whole and its items are written one by one; one of those fails
    (no pooled connection in time): that is the answer of that item only, and the others keep
    theirs (the first one was committed by then)."""
    client = pg_app.test_client()
    payments = [_payment(client, gateway) for _ in range(3)]
    calls = _statements_failing(monkeypatch, {
        1: IntegrityError("the success statement", {}, psycopg.errors.UniqueViolation("taken meanwhile")),
        3: PoolTimeoutError("no connection came free")})
    with pg_app.app_context():
        paid = _write_successes([_success_item(tx_id, f"msg_{tx_id}") for _, tx_id in payments])
    assert paid[0] == payments[0][0] and paid[2] == payments[2][0]
    assert isinstance(paid[1], PoolTimeoutError)
    assert calls == [3, 1, 1, 1]


def test_each_shared_update_names_the_row_it_changes_so_no_two_items_of_a_statement_share_one():
    from app.services.payments import _SAVE_SESSION

    assert one_statement._row_param(_FINISH) == "order_id"
    assert one_statement._row_param(_SAVE_SESSION) == "tx_id"
    with pytest.raises(ValueError):
        one_statement._row_param(Order.__table__.update().where(Order.status == "paid").values(status="open"))


def test_a_shared_update_refuses_parameters_other_than_its_statement_s(pg_app):
    """Through JSON a value left out would be written as NULL (a bound statement refuses it)."""
    with pg_app.test_request_context(), pytest.raises(ValueError):
        one_statement.update_and_record(_FINISH, {"order_id": "ord_x", "claimed_at": utcnow()}, [], name="fulfilled")


@contextmanager
def _held_elsewhere(postgres_url: str, table: str, row_id: str):
    """Another session holds one row's lock until the block ends; yields an engine to look with."""
    other = sa.create_engine(postgres_url)
    holder = other.connect()
    holder.begin()
    holder.exec_driver_sql(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", (row_id,))
    try:
        yield other
    finally:
        holder.rollback()
        holder.close()
        other.dispose()


def test_a_delivery_held_by_a_row_lock_elsewhere_does_not_hold_the_others(pg_app, gateway, postgres_url):
    """Another session holds payment A's row: A's statement waits for it. B's delivery, for
    another payment, comes after and does not wait for A's statement past the writer's stall
    bound (it goes in a statement of its own); A is applied once the lock is let go."""
    client = pg_app.test_client()
    (_, tx_a), (order_b, tx_b) = _payment(client, gateway), _payment(client, gateway)
    answers, took = {}, {}

    def deliver(tx_id):
        started = time.monotonic()
        answers[tx_id] = post_webhook(pg_app.test_client(), status_event(tx_id, "success", 1999)).get_json()
        took[tx_id] = time.monotonic() - started

    a = threading.Thread(target=deliver, args=(tx_a,))
    with _held_elsewhere(postgres_url, "transactions", tx_a):
        a.start()
        time.sleep(0.3)  # A's statement is out, waiting for the lock
        b = threading.Thread(target=deliver, args=(tx_b,))
        b.start()
        b.join(10)
        assert not b.is_alive() and answers[tx_b]["outcome"] == "applied"
        assert a.is_alive()  # still held
        assert took[tx_b] < 5
        assert fulfillment_probe.calls == [(order_b, tx_b)]
    a.join(10)
    assert answers[tx_a]["outcome"] == "applied" and len(fulfillment_probe.calls) == 2


def test_a_row_lock_held_elsewhere_holds_only_its_own_item_of_a_shared_statement(pg_app, gateway, postgres_url):
    """Another session holds payment A's order: the statement carrying A and B waits for it only
    SHARED_LOCK_WAIT_MS and is refused whole; its items go one by one, each also waiting briefly,
    so B is written at once and A is handed back to its own request (None: the general route,
    which waits for the lock alone, as a request always has, and applies it once it is free)."""
    client = pg_app.test_client()
    (order_a, tx_a), (order_b, tx_b) = _payment(client, gateway), _payment(client, gateway)
    paid = []

    def write():
        with pg_app.app_context():
            paid.append(_write_successes([_success_item(tx_a, "msg_lock_a"), _success_item(tx_b, "msg_lock_b")]))

    writing = threading.Thread(target=write)
    with _held_elsewhere(postgres_url, "orders", order_a) as other:
        writing.start()
        writing.join(5)
        assert not writing.is_alive() and paid == [[None, order_b]]
        with other.connect() as look:
            assert look.exec_driver_sql("SELECT status FROM orders WHERE id = %s", (order_b,)).scalar() == "paid"
            assert look.exec_driver_sql("SELECT status FROM transactions WHERE id = %s", (tx_a,)).scalar() == "pending"
    writing.join(10)
    response = post_webhook(client, status_event(tx_a, "success", 1999), msg_id="msg_lock_a")
    assert (response.status_code, response.get_json()["outcome"]) == (200, "applied")
    assert fulfillment_probe.calls == [(order_a, tx_a)]
