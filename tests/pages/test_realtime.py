"""Contract section 5 through socketio.test_client: push on join, pushes after changes, rooms."""

from __future__ import annotations

import logging

import pytest

from app import realtime
from app.extensions import socketio
from app.realtime import room_for
from tests.conftest import place_order, post_webhook, socket_leaves_during, start_payment, status_event


@pytest.fixture
def payment(client, gateway):
    return start_payment(client, gateway, place_order(client)["order_id"])


@pytest.fixture
def connect(app, client):
    opened = []

    def open_one():
        sio = socketio.test_client(app, flask_test_client=client)
        assert sio.is_connected()
        opened.append(sio)
        return sio

    yield open_one
    for sio in opened:
        if sio.is_connected():
            sio.disconnect()


def _updates(sio) -> list[dict]:
    return [event["args"][0] for event in sio.get_received() if event["name"] == "payment_status_update"]


def _rooms(sio) -> set[str]:
    sid = socketio.server.manager.sid_from_eio_sid(sio.eio_sid, "/")
    return set(socketio.server.manager.get_rooms(sid, "/")) - {sid}


def test_join_pushes_the_current_status_at_once(connect, payment):
    sio = connect()
    sio.emit("join", {"transaction_id": payment["transaction_id"]})
    assert _updates(sio) == [{"transaction_id": payment["transaction_id"], "status": "pending"}]
    assert _rooms(sio) == {room_for(payment["transaction_id"])}


def test_a_change_made_before_the_join_is_not_missed(client, connect, payment):
    post_webhook(client, status_event(payment["transaction_id"], "success", 1999))
    sio = connect()
    sio.emit("join", {"transaction_id": payment["transaction_id"]})
    assert _updates(sio) == [{"transaction_id": payment["transaction_id"], "status": "success"}]


def test_a_webhook_is_pushed_to_the_room(client, connect, payment):
    sio = connect()
    sio.emit("join", {"transaction_id": payment["transaction_id"]})
    sio.get_received()
    assert post_webhook(client, status_event(payment["transaction_id"], "success", 1999)).status_code == 200
    assert _updates(sio) == [{"transaction_id": payment["transaction_id"], "status": "success"}]
    # A refused late move (failure after success) pushes nothing.
    post_webhook(client, status_event(payment["transaction_id"], "failure", 1999))
    assert _updates(sio) == []


NO_ARGUMENT = object()


@pytest.mark.parametrize("data", [{"transaction_id": "txn_doesnotexist"}, {"transaction_id": "t" * 500},
                                  {"transaction_id": 5}, {}, "txn_x", None, {"transaction_id": "txn_\ud800"},
                                  {"transaction_id": "txn_é"}, NO_ARGUMENT, ({"transaction_id": "x"}, "extra")])
def test_join_for_an_unknown_transaction_is_an_error_and_joins_nothing(client, connect, payment, data):
    sio = connect()
    if data is NO_ARGUMENT:
        sio.emit("join")
    elif isinstance(data, tuple):
        sio.emit("join", *data)
    else:
        sio.emit("join", data)
    received = sio.get_received()
    assert [(e["name"], e["args"][0]) for e in received] == [("payment_error", {"error": "transaction_not_found"})]
    assert _rooms(sio) == set()
    post_webhook(client, status_event(payment["transaction_id"], "success", 1999))
    assert sio.get_received() == []


def test_no_event_reaches_another_transaction_s_room(client, gateway, connect, payment):
    other = start_payment(client, gateway, place_order(client)["order_id"])
    watching_first, watching_other = connect(), connect()
    watching_first.emit("join", {"transaction_id": payment["transaction_id"]})
    watching_other.emit("join", {"transaction_id": other["transaction_id"]})
    watching_first.get_received()
    watching_other.get_received()
    post_webhook(client, status_event(other["transaction_id"], "failure", 1999))
    assert _updates(watching_first) == []
    assert _updates(watching_other) == [{"transaction_id": other["transaction_id"], "status": "failure"}]


def test_the_shopper_cancel_is_pushed(app, client, gateway, connect, payment):
    from .support import csrf_token, gateway_expire

    sio = connect()
    sio.emit("join", {"transaction_id": payment["transaction_id"]})
    sio.get_received()
    gateway_expire(gateway, payment["transaction_id"])
    token = csrf_token(client, f"/payment/{payment['transaction_id']}")
    client.post(f"/payment/{payment['transaction_id']}/cancel", data={"csrf_token": token})
    assert _updates(sio) == [{"transaction_id": payment["transaction_id"], "status": "cancelled"}]


def test_a_fault_in_our_own_handler_is_logged_with_its_traceback(app, client, monkeypatch, caplog):
    def broken(_transaction_id):
        raise RuntimeError("lookup broke")

    monkeypatch.setattr(realtime, "find_transaction", broken)  # a bug of ours, not a bad packet
    sio = socketio.test_client(app, flask_test_client=client)
    sio.emit("join", {"transaction_id": "txn_anything"})
    [record] = [r for r in caplog.records if r.name == "app.realtime"]
    assert record.getMessage() == "socket.io event 'join' failed" and record.exc_info[0] is RuntimeError
    assert sio.is_connected()
    sio.disconnect()


def test_a_page_that_leaves_while_its_join_is_handled_is_no_fault(app, client, payment, monkeypatch, caplog):
    """The waiting page closed right after asking to join: nothing to push to, and no error."""
    socket_leaves_during(monkeypatch, realtime, "find_transaction")
    caplog.set_level(logging.ERROR)
    other = socketio.test_client(app, flask_test_client=client)  # as in production: not the only socket
    sio = socketio.test_client(app, flask_test_client=client)
    tx_id = payment["transaction_id"]
    sio.emit("join", {"transaction_id": tx_id})
    assert list(socketio.server.manager.get_participants("/", room_for(tx_id))) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not sio.is_connected()  # it did leave (the page's join was the case under test)
    other.disconnect()
