"""The gateway's webhook endpoint (contract section 3, POST /payment-callback)."""

from flask import Blueprint, current_app, jsonify, request

from app.extensions import csrf, limiter
from app.http import error_response
from app.services import webhooks

bp = Blueprint("webhooks", __name__)


@bp.post("/payment-callback")
@csrf.exempt
# Only refused deliveries count, so the gateway's real traffic is never limited while
# unsigned junk from one address cannot fill the rejection log.
@limiter.limit(lambda: current_app.config["RATELIMIT_WEBHOOK_FAILURES"],
               deduct_when=lambda response: response.status_code == 400)
def payment_callback():
    # The raw bytes, exactly as signed: nothing parses the body before verification.
    outcome = webhooks.receive(request.headers, request.get_data(cache=False), request.remote_addr)
    if not outcome.accepted:
        return error_response(400, "invalid_webhook", outcome.message, {"reason": outcome.outcome})
    return jsonify({"received": True, "outcome": outcome.outcome}), 200
