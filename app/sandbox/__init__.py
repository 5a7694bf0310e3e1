"""The built-in sandbox payment gateway (contract sections 4 and 4a).

A separate small Flask app with its own storage that serves the gateway protocol over
real HTTP: the API, the hosted payment page, signed webhooks with retries, fault knobs
and a developer dashboard. ``create_sandbox_app`` assembles it; ``app.sandbox.server``
serves it in a thread; ``app.sandbox.cli`` runs it in the foreground.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, current_app, request

from app.bounded_json import BoundedJSONProvider
from app.sandbox import admin, api, hosted, payments
from app.sandbox.errors import register_error_handlers
from app.domain.money import format_minor_units
from app.sandbox.runtime import SandboxRuntime
from app.sandbox.settings import resolve_settings

log = logging.getLogger(__name__)

__all__ = ["create_sandbox_app"]

MAX_REQUEST_BYTES = 64 * 1024


def _add_latency() -> None:
    """The ``latency_ms`` fault knob: every answer but the admin ones comes late."""
    if request.path.startswith("/_admin"):
        return
    runtime = current_app.extensions["sandbox"]
    args = request.view_args or {}
    keys = [args.get("transaction_id"), args.get("session_id")]
    if any(keys) and runtime.faults.has_payment_scopes():
        keys = payments.both_ids(runtime, *keys)  # a knob may be keyed by the other id
    faults = runtime.faults.effective(*keys)
    if faults.latency_ms:
        time.sleep(faults.latency_ms / 1000)


def _no_framing(response):
    """The hosted card page, like a real gateway's, is never shown inside another site's frame."""
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    return response


def create_sandbox_app(settings: dict | None = None) -> Flask:
    """Build the sandbox gateway app; its runtime is ``app.extensions["sandbox"]``.

    ``settings`` overrides SANDBOX_* keys (see ``app.sandbox.settings.DEFAULTS``). The
    storage's tables are created now; the delivery worker starts unless
    ``SANDBOX_DELIVERY_WORKER`` is false. Stop it with ``app.extensions["sandbox"].stop()``
    (or ``.close()`` to also release the storage).
    """
    resolved = resolve_settings(settings)
    app = Flask(__name__, static_folder=None)
    app.json = BoundedJSONProvider(app)
    app.config.update(resolved)
    app.config.update(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES, JSON_SORT_KEYS=False)
    runtime = SandboxRuntime(resolved)
    app.extensions["sandbox"] = runtime
    app.add_template_filter(format_minor_units, "money")
    app.before_request(_add_latency)
    app.after_request(_no_framing)
    app.register_blueprint(api.bp)
    app.register_blueprint(hosted.bp)
    app.register_blueprint(admin.bp)
    register_error_handlers(app)
    if resolved["SANDBOX_DELIVERY_WORKER"]:
        runtime.start_worker()
    log.info("sandbox gateway app ready")
    return app
