"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app` and `flask --app wsgi ...`."""

import os

# Under gunicorn's gevent worker, patch the standard library before anything imports
# sockets or threads (gunicorn.conf.py sets this), or psycopg would serialise queries.
if os.environ.get("CHECKOUT_GEVENT") == "1":
    from gevent import monkey

    monkey.patch_all()

from app import create_app_or_exit  # noqa: E402

app = create_app_or_exit()
