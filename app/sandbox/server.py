"""Serve the sandbox gateway over real HTTP: in a daemon thread, or in the foreground."""

from __future__ import annotations

import errno
import logging
import threading
from typing import Callable

from werkzeug.serving import make_server

from app.sandbox import create_sandbox_app
from app.sandbox.settings import resolve_settings

log = logging.getLogger(__name__)


class RunningSandbox:
    """A sandbox served by a werkzeug server in a daemon thread."""

    def __init__(self, server, app):
        self._server = server
        self.app = app
        self.host, self.port = server.server_address[:2]
        self.url = app.extensions["sandbox"].settings["SANDBOX_PUBLIC_URL"]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-http", daemon=True
        )

    def start(self) -> RunningSandbox:
        """Begin answering requests."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering, stop the delivery worker and release the storage; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()
        self.app.extensions["sandbox"].close()


def _bind(host: str, port: int, settings: dict | None):
    """Create the app and bind the server; the public URL follows the bound port unless configured.

    The worker starts only once the port is bound, so a busy port leaves nothing running.
    """
    resolved = resolve_settings(settings)
    app = create_sandbox_app({**resolved, "SANDBOX_DELIVERY_WORKER": False})
    runtime = app.extensions["sandbox"]
    try:
        server = make_server(host, port, app, threaded=True)
    except SystemExit:  # werkzeug exits when the port is busy; callers get an exception instead
        runtime.close()
        raise OSError(errno.EADDRINUSE, f"cannot listen on {host}:{port}") from None
    except BaseException:
        runtime.close()
        raise
    if not runtime.settings.get("SANDBOX_PUBLIC_URL"):
        shown_host = f"[{host}]" if ":" in host else host
        runtime.settings["SANDBOX_PUBLIC_URL"] = f"http://{shown_host}:{server.server_address[1]}"
    runtime.settings["SANDBOX_DELIVERY_WORKER"] = resolved["SANDBOX_DELIVERY_WORKER"]
    app.config.update(runtime.settings)
    if resolved["SANDBOX_DELIVERY_WORKER"]:
        runtime.start_worker()
    return app, server


def serve_in_thread(host: str = "127.0.0.1", port: int = 5001, settings: dict | None = None) -> RunningSandbox:
    """Serve the sandbox on ``host:port`` (0 picks a free port) from a daemon thread.

    Returns the running sandbox: ``.url`` is its public origin, ``.stop()`` ends it.
    """
    app, server = _bind(host, port, settings)
    running = RunningSandbox(server, app).start()
    log.info("sandbox gateway serving at %s", running.url)
    return running


def serve_forever(host: str = "127.0.0.1", port: int = 5001, settings: dict | None = None,
                  on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the sandbox in the foreground until interrupted (Ctrl-C); ``on_ready`` is given
    its public URL once the port is bound."""
    app, server = _bind(host, port, settings)
    url = app.extensions["sandbox"].settings["SANDBOX_PUBLIC_URL"]
    log.info("sandbox gateway serving at %s", url)
    if on_ready:
        on_ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.extensions["sandbox"].close()
