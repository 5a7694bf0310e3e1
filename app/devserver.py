"""`make run`: the app on http://127.0.0.1:5000 with the built-in sandbox gateway on :5001.

Run as ``python -m app.devserver`` after ``flask --app wsgi db upgrade`` (``make run`` does
both, and seeds the demo catalog). The sandbox starts only while PAYMENT_GATEWAY_URL is the
development default; it is given the app's own API key and webhook secret, so its webhooks
to PUBLIC_BASE_URL/payment-callback verify. Ctrl-C stops both.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from config import DEV_SANDBOX_URL

APP_HOST = "127.0.0.1"
APP_PORT = 5000

log = logging.getLogger("app.devserver")


def start_sandbox(app):
    """Serve the built-in sandbox gateway in a thread when the app is configured to use it."""
    if app.config["PAYMENT_GATEWAY_URL"] != DEV_SANDBOX_URL:
        log.info("using the gateway at %s (the built-in sandbox is not started)", app.config["PAYMENT_GATEWAY_URL"])
        return None
    from app.sandbox.server import serve_in_thread

    where = urlsplit(DEV_SANDBOX_URL)
    settings = {
        "SANDBOX_API_KEY": app.config["PAYMENT_GATEWAY_API_KEY"],
        # The first secret signs; the app accepts every secret in its list.
        "SANDBOX_WEBHOOK_SECRET": app.config["PAYMENT_WEBHOOK_SECRET"].split()[0],
        "SANDBOX_PUBLIC_URL": DEV_SANDBOX_URL,
    }
    return serve_in_thread(where.hostname, where.port, settings)


def main() -> None:
    """Start the sandbox (when used) and serve the app with Socket.IO until interrupted."""
    from app import create_app_or_exit
    from app.extensions import socketio

    app = create_app_or_exit()
    sandbox = start_sandbox(app)
    if sandbox is not None:
        log.info("sandbox gateway: %s (dashboard at %s/_admin/)", sandbox.url, sandbox.url)
    log.info("shop: http://%s:%d/", APP_HOST, APP_PORT)
    try:
        socketio.run(app, host=APP_HOST, port=APP_PORT, allow_unsafe_werkzeug=True, use_reloader=False,
                     log_output=True)
    finally:
        if sandbox is not None:
            sandbox.stop()


if __name__ == "__main__":
    main()
