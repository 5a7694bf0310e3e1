"""The bare baselines: the least an endpoint of each kind can do on the same stack.

`webhook`: verify the Standard Webhooks signature and run one UPDATE (the issue's baseline).
`webhook-floor`: verify, then the statements a delivery must cost under the contract, as raw
SQL with no logic: read, compare-and-set, order paid, dedup row, timeline lines, commit; then
order fulfilled and its line, commit. Not a target, a yardstick: how close the real endpoint
comes to the least its required work costs written one statement per write.
`webhook-single-statement`: verify, then the same writes as two PostgreSQL statements
(bench/single_statement.py): the least their round trips can be. Also a yardstick.
`initiate`: one INSERT and a call to the gateway stub. Served by gunicorn like the app.
"""

from __future__ import annotations

import os
import secrets

import requests
import sqlalchemy as sa
from flask import Flask, jsonify, request

from app.gateways import signing
from bench.single_statement import deliver

app = Flask(__name__)
engine = sa.create_engine(os.environ["DATABASE_URL"], pool_size=20)
SECRET = os.environ.get("PAYMENT_WEBHOOK_SECRET", "")
GATEWAY = os.environ.get("PAYMENT_GATEWAY_URL", "")
http = requests.Session()


def _verified_data() -> dict | None:
    """The delivery's `data` when its signature verifies, else None."""
    try:
        signing.verify([SECRET], request.headers, request.get_data())
    except signing.SignatureError:
        return None
    return request.get_json()["data"]


def _verified_transaction_id() -> str | None:
    """The delivery's transaction id when its signature verifies, else None."""
    data = _verified_data()
    return None if data is None else data["transaction_id"]


@app.post("/bare/webhook")
def bare_webhook():
    tx_id = _verified_transaction_id()
    if tx_id is None:
        return jsonify(error="invalid"), 400
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE transactions SET status='success' WHERE id=:id AND status='pending'"),
                     {"id": tx_id})
    return jsonify(received=True)


FLOOR_READ = "SELECT id, order_id, status, amount, currency FROM transactions WHERE id = :t"
FLOOR_FIRST = [
    "UPDATE transactions SET status = 'success', updated_at = now() WHERE id = :t AND status = 'pending'",
    "UPDATE orders SET status = 'paid', paid_transaction_id = :t, paid_at = now(), updated_at = now(), "
    "fulfillment_claimed_at = now(), fulfillment_attempts = fulfillment_attempts + 1 "
    "WHERE id = :o AND status = 'open'",
    "INSERT INTO webhook_events (gateway, webhook_id, transaction_id, event_type, status, amount, currency, "
    "outcome, payload, received_at) VALUES ('sandbox', :w, :t, 'payment.status_changed', 'success', 1999, 'USD', "
    "'applied', '{}', now())",
    "INSERT INTO transaction_events (transaction_id, kind, source, outcome, summary, created_at) VALUES "
    "(:t, 'webhook', 'webhook', 'ok', 'webhook', now()), (:t, 'status', 'webhook', 'applied', 'moved', now())",
]
FLOOR_SECOND = [
    "UPDATE orders SET status = 'fulfilled', fulfilled_at = now(), updated_at = now(), "
    "fulfillment_claimed_at = NULL WHERE id = :o AND status = 'paid'",
    "INSERT INTO transaction_events (transaction_id, kind, source, outcome, summary, created_at) VALUES "
    "(:t, 'fulfillment', 'webhook', 'ok', 'order fulfilled', now())",
]


@app.post("/bare/webhook-floor")
def bare_webhook_floor():
    tx_id = _verified_transaction_id()
    if tx_id is None:
        return jsonify(error="invalid"), 400
    values = {"t": tx_id, "w": request.headers["webhook-id"]}
    with engine.begin() as conn:
        values["o"] = conn.execute(sa.text(FLOOR_READ), values).one().order_id
        for statement in FLOOR_FIRST:
            conn.execute(sa.text(statement), values)
    with engine.begin() as conn:
        for statement in FLOOR_SECOND:
            conn.execute(sa.text(statement), values)
    return jsonify(received=True)


@app.post("/bare/webhook-single-statement")
def bare_webhook_single_statement():
    data = _verified_data()
    if data is None:
        return jsonify(error="invalid"), 400
    deliver(engine, data["transaction_id"], data["amount"], data["currency"], request.headers["webhook-id"])
    return jsonify(received=True)


@app.post("/bare/initiate")
def bare_initiate():
    order_id = request.get_json()["order_id"]
    tx_id = "txn_" + secrets.token_urlsafe(16)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO transactions (id, order_id, amount, currency, status, gateway, expires_at, needs_review, "
            "refunded_amount, check_attempts, created_at, updated_at) VALUES (:id, :o, 1999, 'USD', 'pending', "
            "'sandbox', now(), false, 0, 0, now(), now())"), {"id": tx_id, "o": order_id})
    answer = http.post(f"{GATEWAY}/create-session", json={"transaction_id": tx_id}, timeout=5).json()
    return jsonify(transaction_id=tx_id, payment_url=answer["payment_url"]), 201
