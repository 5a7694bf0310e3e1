"""The ops room over Socket.IO: staff join it and hear every change; nobody else does."""

from app.extensions import socketio
from tests.conftest import place_order, post_webhook, start_payment, status_event


def events(sio, name):
    return [e["args"][0] for e in sio.get_received() if e["name"] == name]


def test_staff_join_the_ops_room_and_hear_status_changes(app, admin_client, client, gateway):
    sio = socketio.test_client(app, flask_test_client=admin_client)
    assert sio.is_connected()
    sio.emit("ops_join")
    assert events(sio, "ops_joined") == [{"room": "ops"}]
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    post_webhook(client, status_event(tx_id, "success", 1999))
    # a new payment is announced when it is created, then every change
    assert events(sio, "transaction_updated") == [{"transaction_id": tx_id, "status": "pending"},
                                                  {"transaction_id": tx_id, "status": "success"}]
    sio.disconnect()


def test_viewers_are_staff_too(app, viewer_client):
    sio = socketio.test_client(app, flask_test_client=viewer_client)
    sio.emit("ops_join")
    assert events(sio, "ops_joined") == [{"room": "ops"}]
    sio.disconnect()


def test_anonymous_clients_cannot_join(app, client, gateway):
    sio = socketio.test_client(app, flask_test_client=client)
    sio.emit("ops_join")
    received = sio.get_received()
    assert [e["name"] for e in received] == ["ops_error"]
    assert received[0]["args"][0] == {"error": "unauthorized"}
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    post_webhook(client, status_event(tx_id, "success", 1999))
    assert events(sio, "transaction_updated") == []
    sio.disconnect()


def test_pages_load_the_live_script_and_mark_what_to_refresh(admin_client, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    listing = admin_client.get("/ops/transactions").get_data(as_text=True)
    assert "/static/vendor/socket.io.min.js" in listing and "/static/js/ops.js" in listing
    assert 'data-ops-page="list"' in listing and 'id="transaction-rows"' in listing
    detail = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert 'data-ops-page="detail"' in detail and f'data-transaction-id="{tx_id}"' in detail
    assert admin_client.get("/static/js/ops.js").status_code == 200
