"""Routes of the payment API: thin, each calls one service."""

from flask import jsonify, request

from app.extensions import csrf, initiate_limit
from app.http import header_text, json_body
from app.payments import bp
from app.payments.schemas import InitiatePaymentRequest
from app.services import idempotency, payments
from app.services.errors import ServiceError


@bp.post("/initiate-payment")
@csrf.exempt  # JSON only (415 otherwise), which a cross-site form cannot send
@initiate_limit
def initiate_payment():
    key = header_text("Idempotency-Key")
    try:
        body = json_body(InitiatePaymentRequest)
    except ServiceError:
        idempotency.refuse_if_taken(key)  # a used key with a refused body: another body
        raise
    status, data = payments.initiate_payment(body.order_id, body.amount, key, request.get_json())
    return jsonify(data), status


@bp.get("/check-payment-status/<transaction_id>")
def check_payment_status(transaction_id: str):
    return jsonify(payments.payment_status(transaction_id))
