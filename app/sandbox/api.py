"""The gateway API of contract section 4, served at the sandbox's root.

Every route requires ``Authorization: Bearer SANDBOX_API_KEY``; every refusal is JSON
``{"error", "message"}``.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, jsonify, request

from app.sandbox import payments, protocol, refunds
from app.sandbox.access import require_bearer
from app.sandbox.faults import MODE_TIMEOUT
from app.sandbox.protocol import SandboxError

log = logging.getLogger(__name__)

bp = Blueprint("sandbox_api", __name__)


def _runtime():
    return current_app.extensions["sandbox"]


@bp.before_request
def _authenticate():
    require_bearer(request, _runtime().settings["SANDBOX_API_KEY"])


def _body():
    return protocol.require_object(request.get_json(force=True, silent=True))


@bp.post("/create-session")
def create_session():
    """Create (or replay under the same Idempotency-Key) a hosted checkout session."""
    runtime = _runtime()
    key = protocol.idempotency_key(request.headers.get("Idempotency-Key"), required=True)
    body = _body()
    raw_tx = body.get("transaction_id")
    failure = runtime.faults.take_create_failure(raw_tx if isinstance(raw_tx, str) else None)
    if failure is not None and failure.mode != MODE_TIMEOUT:
        log.warning("sandbox create-session for transaction %s failed by fault knob (%d)", raw_tx, failure.status)
        raise SandboxError(failure.status, "service_unavailable", "The gateway is failing on purpose (fault knob).")
    if failure is not None:
        # The response is late, not lost: the session is still created, as a real timeout would.
        log.warning(
            "sandbox create-session for transaction %s stalls %.1fs (fault knob)", raw_tx, failure.timeout_seconds
        )
        time.sleep(failure.timeout_seconds)
    parsed = protocol.parse_create_session(body)
    session, _created = payments.create_session(runtime, parsed, key)
    payment_url = f"{runtime.public_url(request.root_url)}/pay/{session.session_id}"
    return jsonify({"session_id": session.session_id, "payment_url": payment_url})


@bp.get("/status/<transaction_id>")
def status(transaction_id: str):
    """The payment's status by transaction id (404 when unknown)."""
    session = payments.find_session(_runtime(), transaction_id=transaction_id)
    if session is None:
        raise SandboxError(404, "transaction_not_found", "No payment has this transaction_id.")
    return jsonify(protocol.status_view(session))


@bp.post("/sessions/<session_id>/expire")
def expire(session_id: str):
    """Expire a session: 200 expired (also when already closed), 409 when already paid."""
    session = payments.expire(_runtime(), session_id)
    if payments.is_paid(session):
        return jsonify({
            "status": "success",
            "error": "already_paid",
            "message": "The shopper already paid this session.",
        }), 409
    log.info("sandbox session %s of transaction %s expire requested: %s",
             session.session_id, session.transaction_id, session.status)
    return jsonify({"status": "expired", "session_status": session.status})


@bp.post("/refunds")
def create_refund():
    """Refund part or all of a paid transaction."""
    key = protocol.idempotency_key(request.headers.get("Idempotency-Key"), required=False)
    transaction_id, amount = protocol.parse_refund(_body())
    record = refunds.refund(_runtime(), transaction_id, amount, key)
    return jsonify({
        "refund_id": record.refund_id,
        "status": "succeeded",
        "transaction_id": record.transaction_id,
        "amount": record.amount,
    })
