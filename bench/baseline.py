"""The bare baselines: the least an endpoint of each kind can do on the same stack.

`webhook`: verify the Standard Webhooks signature and run one UPDATE.
`initiate`: one INSERT and a call to the gateway stub. Served by gunicorn like the app.
"""

from __future__ import annotations

import os
import secrets

import requests
import sqlalchemy as sa
from flask import Flask, jsonify, request

from app.gateways import signing

app = Flask(__name__)
engine = sa.create_engine(os.environ["DATABASE_URL"], pool_size=20)
SECRET = os.environ.get("PAYMENT_WEBHOOK_SECRET", "")
GATEWAY = os.environ.get("PAYMENT_GATEWAY_URL", "")
http = requests.Session()


@app.post("/bare/webhook")
def bare_webhook():
    try:
        signing.verify([SECRET], request.headers, request.get_data())
    except signing.SignatureError:
        return jsonify(error="invalid"), 400
    tx_id = request.get_json()["data"]["transaction_id"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE transactions SET status='success' WHERE id=:id AND status='pending'"),
                     {"id": tx_id})
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
