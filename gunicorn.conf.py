"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (a --bind on the command line wins).

Worker class: gevent. Every open Socket.IO websocket holds its connection for minutes; a
greenlet per connection costs kilobytes where a gthread thread costs a thread, so one gevent
worker holds thousands of waiting pages. wsgi.py monkey-patches first (CHECKOUT_GEVENT),
which psycopg needs to run queries concurrently under gevent.

Workers: one unless REDIS_URL is set, because Socket.IO rooms live in process memory and
only the Redis message queue lets several processes share them.
"""

import json
import multiprocessing
import os
import secrets

import gunicorn.util
from dotenv import load_dotenv

# The app reads a .env file beside it (config.py); the settings read here come from the same place.
load_dotenv(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env"))
os.environ.setdefault("CHECKOUT_GEVENT", "1")
os.environ.setdefault("SOCKETIO_ASYNC_MODE", "gevent")

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
worker_class = "gevent"
worker_connections = 2000
if os.environ.get("REDIS_URL"):
    workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count())))
else:
    workers = 1
# Development without SECRET_KEY draws a random key per process: several workers must share
# one, or a form signed by one worker is refused by the next. One is drawn here, in the master,
# before the workers fork. Production ignores it and still refuses to start without SECRET_KEY.
if not os.environ.get("SECRET_KEY"):  # whatever the worker count, -w on the command line included
    os.environ["CHECKOUT_DEV_SECRET_KEY"] = secrets.token_hex(32)
timeout = 60
graceful_timeout = 30  # in-flight webhooks and gateway calls get this long to finish on SIGTERM
keepalive = 5
control_socket_disable = True  # several instances on one machine must not share a socket
accesslog = "-"
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(_server):
    """What the environment alone says the app cannot start with (an unknown APP_ENV, a number
    that is not one, production's refusals) stops gunicorn here, in the master, before any
    worker: one line and status 3, however many workers. Only config.py is imported, which
    loads nothing a gevent worker must patch first."""
    from config import ConfigurationError, config_by_name, exit_refusing, refuse_unusable

    try:
        refuse_unusable(config_by_name())
    except ConfigurationError as refusal:
        exit_refusing(refusal)


# A request gunicorn cannot parse (bad header bytes, a request line or headers too long, a
# malformed Content-Length) is answered by gunicorn itself, before the app: in the contract's
# JSON error shape instead of gunicorn's HTML page. Nothing of the request is echoed.
_CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
          431: "headers_too_large", 501: "not_implemented"}


def _json_error(sock, status_int, reason, _detail):
    body = json.dumps({"error": _CODES.get(status_int, "internal_error"),
                       "message": f"The request could not be read ({reason})."}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn.util.write_nonblock(sock, head + body)


gunicorn.util.write_error = _json_error
