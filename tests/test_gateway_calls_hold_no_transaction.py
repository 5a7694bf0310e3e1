"""No database transaction is held open while the gateway is asked anything.

A gateway call can take GATEWAY_TOTAL_BUDGET (25 s). A transaction open across it keeps a
connection idle in transaction: out of the pool, holding its table locks, and liable to be
ended by the server's idle-in-transaction timeout, after which the write recording the
gateway's answer fails although the gateway acted. Each call records how many of the app's
pooled connections are checked out at that moment: none, in every flow that calls it.
"""

from __future__ import annotations

import json
import re

import responses

from app.extensions import db
from tests.conftest import GATEWAY, place_order, post_webhook, prepare_database, status_event
from tests.jobs.support import reconcile, set_age
from tests.ops.conftest import ADMIN, add_user, login, post_form


def watch_gateway(app, gateway) -> list[tuple[str, int]]:
    """Answer every gateway call like a working gateway, noting the connections checked out."""
    with app.app_context():
        engine = db.engine
    seen: list[tuple[str, int]] = []

    def answer(body):
        def reply(request):
            seen.append((f"{request.method} {request.path_url}", engine.pool.checkedout()))
            return 200, {}, json.dumps(body(request) if callable(body) else body)
        return reply

    def session(request):
        key = request.headers["Idempotency-Key"]
        return {"session_id": f"cs_{key}", "payment_url": f"{GATEWAY}/pay/cs_{key}"}

    gateway.add_callback(responses.POST, f"{GATEWAY}/create-session", callback=answer(session))
    gateway.add_callback(responses.POST, re.compile(f"{GATEWAY}/sessions/.*/expire"),
                         callback=answer({"status": "expired"}))
    gateway.add_callback(responses.POST, f"{GATEWAY}/refunds",
                         callback=answer({"refund_id": "rf_gw_1", "status": "succeeded"}))
    def pending(request):
        return {"transaction_id": request.path_url.rsplit("/", 1)[1], "status": "pending", "amount": 1999,
                "currency": "USD"}

    gateway.add_callback(responses.GET, re.compile(f"{GATEWAY}/status/.*"), callback=answer(pending))
    return seen


def test_every_flow_calls_the_gateway_with_no_connection_checked_out(make_pg_app, postgres_url, gateway):
    app = make_pg_app()
    prepare_database(app, postgres_url)
    add_user(app, ADMIN, "admin")
    seen = watch_gateway(app, gateway)
    client = app.test_client()
    assert login(client, ADMIN).status_code == 303

    def new_payment() -> tuple[dict, str]:
        order = place_order(client)
        answer = client.post("/initiate-payment", json={"order_id": order["order_id"]})
        assert answer.status_code == 201, answer.get_json()
        return order, answer.get_json()["transaction_id"]

    _, rechecked = new_payment()
    post_form(client, f"/ops/transactions/{rechecked}/recheck")
    post_form(client, f"/ops/transactions/{rechecked}/cancel")
    paid_order, returned = new_payment()
    client.get(f"/payment/{returned}?returned=1")
    assert post_webhook(client, status_event(returned, "success", paid_order["total"])).status_code == 200
    refund = post_form(client, f"/ops/transactions/{returned}/refund",
                       {"amount": "100", "request_key": "refund-form-1"}, token_from=f"/ops/transactions/{returned}")
    assert refund.status_code == 303, refund.get_data(as_text=True)[:300]
    _, checked = new_payment()
    set_age(app, checked, app.config["PAYMENT_STATUS_CHECK_AFTER"] + 60)
    reconcile(app)
    _, expired = new_payment()
    set_age(app, expired, app.config["PAYMENT_EXPIRES_AFTER"] + 60)
    reconcile(app)

    calls = [call for call, _ in seen]
    for kind in ("POST /create-session", f"GET /status/{rechecked}", f"POST /sessions/cs_{rechecked}/expire",
                 f"GET /status/{returned}", "POST /refunds", f"GET /status/{checked}",
                 f"POST /sessions/cs_{expired}/expire"):
        assert kind in calls, (kind, calls)
    assert [(call, held) for call, held in seen if held] == [], seen
