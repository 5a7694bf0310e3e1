"""Developer surface: a dashboard of sessions and webhook deliveries, and the fault knobs.

Protection, chosen for a development sandbox:
- ``GET /_admin/`` (HTML dashboard) is open to loopback visitors (the developer's own
  browser on 127.0.0.1) and otherwise needs the admin key, as a bearer token or as the
  password of HTTP Basic auth (any user name; the browser prompts for it).
- The JSON endpoints (``/_admin/faults``, ``/_admin/deliveries``) always need
  ``Authorization: Bearer SANDBOX_ADMIN_KEY`` (defaults to the API key).
The dashboard shows no card data at all, not even the last four digits.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from sqlalchemy import select

from app.sandbox.access import admin_allowed, require_bearer
from app.sandbox.faults import GLOBAL, FaultError
from app.sandbox.models import Delivery, PaymentSession
from app.sandbox.protocol import SandboxError

log = logging.getLogger(__name__)

bp = Blueprint("sandbox_admin", __name__, url_prefix="/_admin")

DASHBOARD_ROWS = 100


def _runtime():
    return current_app.extensions["sandbox"]


def _require_admin_key() -> None:
    require_bearer(request, _runtime().settings["SANDBOX_ADMIN_KEY"])


def delivery_view(delivery: Delivery) -> dict:
    """A delivery as the admin JSON shows it."""
    def iso(moment):
        return moment.isoformat() if moment else None

    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "transaction_id": delivery.transaction_id,
        "event_status": delivery.event_status,
        "url": delivery.url,
        "state": delivery.state,
        "note": delivery.note,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_attempt_at": iso(delivery.last_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_answer": delivery.last_answer,
        "delivered_at": iso(delivery.delivered_at),
        "body": delivery.body,
    }


@bp.get("/")
def dashboard():
    """The sessions and webhook deliveries, newest first, with attempts and answers."""
    runtime = _runtime()
    if not admin_allowed(request, runtime.settings["SANDBOX_ADMIN_KEY"]):
        return Response(
            "The sandbox dashboard needs the admin key.", 401,
            {"WWW-Authenticate": 'Basic realm="sandbox gateway"', "Content-Type": "text/plain; charset=utf-8"},
        )
    with runtime.storage.session() as db:
        sessions = db.scalars(select(PaymentSession).order_by(PaymentSession.id.desc()).limit(DASHBOARD_ROWS)).all()
        deliveries = db.scalars(select(Delivery).order_by(Delivery.id.desc()).limit(DASHBOARD_ROWS)).all()
    return render_template("dashboard.html", sessions=sessions, deliveries=deliveries, faults=runtime.faults.snapshot())


@bp.get("/faults")
def read_faults():
    """``{"global": {...}, "sessions": {key: {...}}}``: the knobs set (defaults omitted)."""
    _require_admin_key()
    return jsonify(_runtime().faults.snapshot())


@bp.post("/faults")
def set_faults():
    """Merge knobs into a scope. Body: ``{"scope": "global" | <transaction or session id>, knob: value, ...}``."""
    _require_admin_key()
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise SandboxError(400, "invalid_json", "The request body must be a JSON object.")
    knobs = dict(body)
    scope = knobs.pop("scope", GLOBAL)
    try:
        in_force = _runtime().faults.set(scope, knobs)
    except FaultError as exc:
        raise SandboxError(422, "invalid_fault", str(exc)) from None
    log.warning("sandbox fault knobs for %s set: %s", scope, in_force)
    return jsonify({"scope": scope, "faults": in_force})


@bp.delete("/faults")
def clear_faults():
    """Clear every knob, or only those of ``?scope=...``; answers the knobs left."""
    _require_admin_key()
    scope = request.args.get("scope")
    _runtime().faults.clear(scope)
    log.warning("sandbox fault knobs cleared: %s", scope or "all")
    return jsonify(_runtime().faults.snapshot())


@bp.get("/deliveries")
def list_deliveries():
    """Webhook deliveries, newest first; ``?transaction_id=`` narrows to one payment."""
    _require_admin_key()
    query = select(Delivery).order_by(Delivery.id.desc()).limit(500)
    transaction_id = request.args.get("transaction_id")
    if transaction_id:
        query = query.where(Delivery.transaction_id == transaction_id)
    with _runtime().storage.session() as db:
        rows = db.scalars(query).all()
    return jsonify({"deliveries": [delivery_view(row) for row in rows]})
