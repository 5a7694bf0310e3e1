"""A database connection that breaks *during* a request, on a real PostgreSQL server.

The server ends the session under a chosen statement: a trigger calls pg_terminate_backend on
its own backend, once (a sequence counts, and a sequence is not rolled back with the dying
transaction). Found by a chaos run that terminated backends under load: a fulfillment
handler that had returned was run again, and requests answered 500.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from app.connections import lost_connection
from app.extensions import db
from app.models import Order, TransactionEvent
from app.services.fulfillment import fulfill_order
from tests import fulfillment_probe
from tests.conftest import (open_sessions, place_order, post_webhook, prepare_database, probed_app, start_payment,
                            status_event)


@pytest.fixture
def pg_app(make_pg_app, postgres_url):
    yield probed_app(make_pg_app, postgres_url)


@pytest.fixture
def end_session_once(pg_admin):
    """``arm(table, event, condition)``: the next row ``event`` (INSERT or UPDATE) on ``table``
    matching ``condition`` (over NEW) ends its own database session, once."""
    made = []

    def arm(table: str, event: str, condition: str = "true") -> None:
        name = f"end_once_{uuid.uuid4().hex[:8]}"
        pg_admin.execute(sa.text(f"CREATE SEQUENCE {name}"))
        pg_admin.execute(sa.text(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF nextval('{name}') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
            f"RETURN NEW; END $$"))
        pg_admin.execute(sa.text(f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW "
                              f"WHEN ({condition}) EXECUTE FUNCTION {name}()"))
        made.append((name, table))

    yield arm
    for name, table in made:
        pg_admin.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
        pg_admin.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}()"))
        pg_admin.execute(sa.text(f"DROP SEQUENCE IF EXISTS {name}"))


def fulfilled_lines(app, tx_id: str) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.summary == "order fulfilled"))


def order_state(app, order_id: str):
    with app.app_context():
        return db.session.execute(sa.select(Order.status, Order.fulfillment_claimed_at)
                                  .where(Order.id == order_id)).one()


def test_a_handler_that_returned_is_recorded_even_when_the_session_ends_under_the_write(
        pg_app, gateway, end_session_once):
    client = pg_app.test_client()
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    end_session_once("orders", "UPDATE", "NEW.status = 'fulfilled'")

    response = post_webhook(client, status_event(tx_id, "success", order["total"]))

    assert response.status_code == 200, response.get_json()
    assert len(fulfillment_probe.calls) == 1
    status, claim = order_state(pg_app, order["order_id"])
    assert status == "fulfilled" and claim is None  # recorded on a fresh connection, claim given back
    assert fulfilled_lines(pg_app, tx_id) == 1
    with pg_app.app_context():
        assert fulfill_order(order["order_id"]) is False  # a later pass finds nothing to run again
    assert len(fulfillment_probe.calls) == 1


def test_reconciliation_runs_the_handler_with_no_transaction_open(make_pg_app, postgres_url, gateway):
    """A transaction left open while the handler runs sits idle in it: a server timeout ends
    it, and the write after the handler then found the connection gone."""
    app = make_pg_app(FULFILLMENT_HANDLER="tests.fulfillment_probe:record", SQLALCHEMY_ENGINE_OPTIONS={
        "connect_args": {"options": "-c idle_in_transaction_session_timeout=300"}})
    prepare_database(app, postgres_url)
    client = app.test_client()
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    fulfillment_probe.reset(fail_times=1, takes=0.8)  # fails at payment time, then takes longer than the timeout
    assert post_webhook(client, status_event(tx_id, "success", order["total"])).status_code == 200
    assert order_state(app, order["order_id"]).status == "paid"

    with app.app_context():
        assert fulfill_order(order["order_id"], source="poller") is True

    assert fulfillment_probe.in_transaction == [False, False]  # at payment time, and on the retry
    assert len(fulfillment_probe.calls) == 1 and order_state(app, order["order_id"]).status == "fulfilled"


def test_a_request_whose_connection_ends_under_it_answers_503_and_the_next_one_works(pg_app, end_session_once):
    client = pg_app.test_client()
    end_session_once("orders", "INSERT")
    body = {"items": [{"sku": "TEE-BLACK", "quantity": 1}]}

    lost = client.post("/api/orders", json=body)

    assert lost.status_code == 503
    assert lost.get_json()["error"] == "database_unavailable" and lost.headers["Retry-After"] == "2"
    assert lost.get_json()["reference"] in lost.get_json()["message"]
    assert client.post("/api/orders", json=body).status_code == 201
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200


def test_a_page_whose_connection_ends_under_it_answers_a_503_page(pg_app, end_session_once):
    client = pg_app.test_client()
    token = client.get("/").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    end_session_once("orders", "INSERT")
    lost = client.post("/checkout", data={"csrf_token": token, "qty-TEE-BLACK": "1"})
    assert lost.status_code == 503 and lost.mimetype == "text/html"
    assert "Our database could not finish this request" in lost.get_data(as_text=True)


def test_an_answer_stored_under_an_idempotency_key_survives_the_session_ending_under_it(
        pg_app, gateway, end_session_once):
    client = pg_app.test_client()
    open_sessions(gateway)
    order = place_order(client)
    end_session_once("idempotency_records", "UPDATE", "NEW.status_code IS NOT NULL")
    headers = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}

    first = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)
    again = client.post("/initiate-payment", json={"order_id": order["order_id"]}, headers=headers)

    assert first.status_code == 201, first.get_json()
    assert again.status_code == 201 and again.get_json() == first.get_json()  # replayed, not "in progress"


def test_no_pooled_connection_coming_free_in_time_is_a_503_too(make_pg_app, postgres_url):
    app = make_pg_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.3})
    prepare_database(app, postgres_url)
    with app.app_context():
        engine = db.engine
    with engine.connect():  # the only connection, taken
        busy = app.test_client().get("/api/products")
    assert busy.status_code == 503 and busy.get_json()["error"] == "database_unavailable"
    assert app.test_client().get("/api/products").status_code == 200


def test_a_handler_that_returned_is_recorded_when_the_pool_is_busy_for_a_moment(make_pg_app, postgres_url, gateway):
    """The write recording a return waits for a pooled connection longer than pool_timeout: it
    is tried again, not given up (which left the claim held, and the handler to be run again)."""
    app = make_pg_app(FULFILLMENT_HANDLER="tests.fulfillment_probe:record",
                      SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.3})
    prepare_database(app, postgres_url)
    client = app.test_client()
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    with app.app_context():
        engine = db.engine
    released = threading.Event()

    def hold_the_pool():  # as another request would, from the moment the handler returns
        with engine.connect():
            time.sleep(0.8)
        released.set()

    fulfillment_probe.reset()
    original = fulfillment_probe.record

    def record_then_busy(order_id, transaction_id):
        original(order_id, transaction_id)
        threading.Thread(target=hold_the_pool).start()
        time.sleep(0.05)  # the other request has the connection before the write asks for it

    fulfillment_probe.record = record_then_busy
    try:
        response = post_webhook(client, status_event(tx_id, "success", order["total"]))
    finally:
        fulfillment_probe.record = original
    assert released.wait(5)
    assert response.status_code == 200, response.get_json()
    assert len(fulfillment_probe.calls) == 1 and order_state(app, order["order_id"]).status == "fulfilled"


def _error_of(app, *statements: str) -> Exception:
    """The error the database itself raises for the last of ``statements``."""
    with app.app_context(), db.engine.connect() as conn:
        for statement in statements[:-1]:
            conn.execute(sa.text(statement))
        with pytest.raises(sa.exc.DBAPIError) as raised:
            conn.execute(sa.text(statements[-1]))
    return raised.value


def test_a_fault_in_the_statement_is_not_taken_for_a_passing_failure(app):
    """A missing table (on SQLite an OperationalError too) answers 500, not 'try again'."""
    assert not lost_connection(_error_of(app, "SELECT * FROM no_such_table"))
    assert not lost_connection(_error_of(app, "SELEC 1"))


def test_a_cancelled_statement_is_a_passing_failure(pg_app):
    assert lost_connection(_error_of(pg_app, "SET statement_timeout = 1", "SELECT pg_sleep(1)"))
