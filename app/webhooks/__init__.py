"""The gateway's webhook endpoint (contract section 3, POST /payment-callback)."""

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.extensions import csrf, limiter
from app.http import error_response, raw_body
from app.services import webhooks

bp = Blueprint("webhooks", __name__)


def _verified():
    """Verify the delivery once, before the rate limit: a signed delivery is never limited."""
    if "webhook_verified" not in g:
        g.webhook_verified = webhooks.verify(request.headers, raw_body())
    return g.webhook_verified


def _signed() -> bool:
    """For the rate limit, which must not raise: a body too large or cut off is not signed
    (the route then refuses it itself)."""
    try:
        return webhooks.is_signed(_verified())
    except HTTPException:
        return False


@bp.post("/payment-callback")
@csrf.exempt
# Only refused deliveries count, and a delivery whose signature checks out is exempt, so the
# gateway's real traffic is never limited, even from an address that also sent junk, while
# unsigned junk from one address cannot fill the rejection log.
@limiter.limit(lambda: current_app.config["RATELIMIT_WEBHOOK_FAILURES"],
               exempt_when=_signed,
               deduct_when=lambda response: response.status_code == 400)
def payment_callback():
    # The raw bytes, exactly as signed: nothing parses the body before verification.
    outcome = webhooks.receive(_verified(), request.get_data(), request.remote_addr)  # the body _verified read
    if not outcome.accepted:
        return error_response(400, "invalid_webhook", outcome.message, {"reason": outcome.outcome})
    return jsonify({"received": True, "outcome": outcome.outcome}), 200
