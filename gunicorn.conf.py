"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (a --bind on the command line wins).

Worker class: gevent. Every open Socket.IO websocket holds its connection for minutes; a
greenlet per connection costs kilobytes where a gthread thread costs a thread, so one gevent
worker holds thousands of waiting pages. wsgi.py monkey-patches first (CHECKOUT_GEVENT),
which psycopg needs to run queries concurrently under gevent.

Workers: one unless REDIS_URL is set, because Socket.IO rooms live in process memory and
only the Redis message queue lets several processes share them.
"""

import multiprocessing
import os

os.environ.setdefault("CHECKOUT_GEVENT", "1")
os.environ.setdefault("SOCKETIO_ASYNC_MODE", "gevent")

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
worker_class = "gevent"
worker_connections = 2000
if os.environ.get("REDIS_URL"):
    workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count())))
else:
    workers = 1
timeout = 60
graceful_timeout = 30  # in-flight webhooks and gateway calls get this long to finish on SIGTERM
keepalive = 5
control_socket_disable = True  # several instances on one machine must not share a socket
accesslog = "-"
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
