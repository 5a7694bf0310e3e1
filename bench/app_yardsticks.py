"""The real app with two yardstick routes added, for bench/webhooks.py (never deployed).

They tell the cost of the app's own stack (Flask-SQLAlchemy session, the pool's check-out
check, Socket.IO middleware, extensions) apart from the cost of what the webhook endpoint does:
`/bench/update` verifies with the app's gateway adapter and runs the bare baseline's one
UPDATE through the app's session; `/bench/single-statement` runs bench/single_statement.py
on the app's engine.
"""

from wsgi import app  # first: under gevent, wsgi.py monkey-patches before anything else loads

import sqlalchemy as sa  # noqa: E402
from flask import jsonify, request  # noqa: E402

from app.extensions import csrf, db  # noqa: E402
from app.gateways.registry import get_gateway  # noqa: E402
from bench.single_statement import deliver  # noqa: E402

_UPDATE = sa.text("UPDATE transactions SET status = 'success' WHERE id = :id AND status = 'pending'")


@csrf.exempt
def update_in_app():
    event = get_gateway().verify_webhook(request.headers, request.get_data())
    db.session.execute(_UPDATE, {"id": event.transaction_id})
    db.session.commit()
    return jsonify(received=True)


@csrf.exempt
def single_statement_in_app():
    event = get_gateway().verify_webhook(request.headers, request.get_data())
    deliver(db.engine, event.transaction_id, event.amount, event.currency, event.webhook_id)
    return jsonify(received=True)


app.add_url_rule("/bench/update", view_func=update_in_app, methods=["POST"])
app.add_url_rule("/bench/single-statement", view_func=single_statement_in_app, methods=["POST"])
