"""The developer dashboard and the deliveries listing."""

from __future__ import annotations

import base64

from .support import ADMIN, ADMIN_KEY, AUTH, Shopper

REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def test_dashboard_lists_sessions_and_deliveries_without_card_data(make_app):
    app = make_app(SANDBOX_PENDING_SECONDS=600)  # the 0077 card must still be settling when the page is read
    runtime = app.extensions["sandbox"]
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_paid", callback_url="http://127.0.0.1:9/cb"), "4000 0000 0000 0077")
    shopper.pay(shopper.session_id("tx_card", callback_url="http://127.0.0.1:9/cb"), "5555 5555 5555 4444")
    runtime.tick()  # one failed attempt, so there is an answer to show
    html = app.test_client().get("/_admin/").get_data(as_text=True)
    assert "tx_paid" in html and "tx_card" in html and "processing" in html
    assert "19.99" in html and "msg_" in html and "Connection" in html
    assert "5555" not in html and "4444" not in html and "0077" not in html


def test_dashboard_from_another_machine_needs_the_admin_key(client):
    refused = client.get("/_admin/", environ_base=REMOTE)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    basic = "Basic " + base64.b64encode(f"dev:{ADMIN_KEY}".encode()).decode()
    assert client.get("/_admin/", environ_base=REMOTE, headers={"Authorization": basic}).status_code == 200
    assert client.get("/_admin/", environ_base=REMOTE, headers=ADMIN).status_code == 200
    wrong = "Basic " + base64.b64encode(b"dev:guess").decode()
    assert client.get("/_admin/", environ_base=REMOTE, headers={"Authorization": wrong}).status_code == 401


def test_deliveries_listing(app, runtime):
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1", callback_url="http://127.0.0.1:9/cb"))
    shopper.pay(shopper.session_id("tx_2", callback_url="http://127.0.0.1:9/cb"))
    client = app.test_client()
    assert client.get("/_admin/deliveries", headers=AUTH).status_code == 401
    listed = client.get("/_admin/deliveries?transaction_id=tx_1", headers=ADMIN).get_json()["deliveries"]
    assert [(d["transaction_id"], d["event_status"], d["state"]) for d in listed] == [("tx_1", "success", "queued")]
    assert len(client.get("/_admin/deliveries", headers=ADMIN).get_json()["deliveries"]) == 2
