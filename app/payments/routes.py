"""Routes of the payment API: thin, each calls one service."""

from flask import current_app, jsonify, request

from app.extensions import csrf, limiter
from app.http import json_body
from app.payments import bp
from app.payments.schemas import InitiatePaymentRequest
from app.services import payments


@bp.post("/initiate-payment")
@csrf.exempt  # JSON only (415 otherwise), which a cross-site form cannot send
@limiter.limit(lambda: current_app.config["RATELIMIT_INITIATE"])
def initiate_payment():
    body = json_body(InitiatePaymentRequest)
    status, data = payments.initiate_payment(
        body.order_id, body.amount, request.headers.get("Idempotency-Key"), request.get_json()
    )
    return jsonify(data), status


@bp.get("/check-payment-status/<transaction_id>")
def check_payment_status(transaction_id: str):
    return jsonify(payments.payment_status(transaction_id))
