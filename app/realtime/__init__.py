"""Socket.IO: shoppers join a transaction's room; every status change is pushed after commit.

``notify_status`` is the one emit helper every writer goes through (via apply_status).
With REDIS_URL set the emit travels through the message queue to every process.
"""

from __future__ import annotations

import logging

from flask import request
from sqlalchemy import select

from app.extensions import db, join_if_connected, socketio
from app.models import Transaction
from app.services.payments import find_transaction

log = logging.getLogger(__name__)
OPS_ROOM = "ops"


def room_for(transaction_id: str) -> str:
    return f"txn:{transaction_id}"


def notify_status(transaction_id: str, status: str) -> None:
    """Push ``payment_status_update`` to the transaction's room and to ops. Call after commit."""
    _emit("payment_status_update", transaction_id, status, room_for(transaction_id))
    notify_ops_only(transaction_id, status)


def notify_ops_only(transaction_id: str, status: str) -> None:
    """Tell only the ops pages about a transaction (a new one has nobody in its room yet). After commit."""
    _emit("transaction_updated", transaction_id, status, OPS_ROOM)


def _emit(event: str, transaction_id: str, status: str, room: str) -> None:
    try:
        socketio.emit(event, {"transaction_id": transaction_id, "status": status}, to=room)
    except Exception:  # a broken message queue must not undo a committed payment
        log.exception("txn=%s realtime emit failed", transaction_id)


def register_events() -> None:
    """Attach the Socket.IO handlers of contract section 5."""

    @socketio.on_error_default
    def on_handler_error(_exc):
        # A fault in one of our handlers: logged here with its traceback, so that engine.io's own
        # "handler error" records can only be about packets that did not decode (app/__init__).
        log.exception("socket.io event %r failed", getattr(request, "event", {}).get("message"))
        db.session.remove()

    @socketio.on("join")
    def on_join(data=None, *_extra):  # a client may send no argument, or several
        transaction_id = data.get("transaction_id") if isinstance(data, dict) else None
        if find_transaction(transaction_id) is None:
            socketio.emit("payment_error", {"error": "transaction_not_found"}, to=request.sid)
            db.session.remove()
            return
        # Join first, then read: a change committed in between is either in the status read
        # below or emitted to the room this client is already in, so it is never missed.
        if not join_if_connected(room_for(transaction_id)):
            db.session.remove()
            return  # the page left before its join was handled
        status = db.session.scalar(select(Transaction.status).where(Transaction.id == transaction_id))
        socketio.emit("payment_status_update", {"transaction_id": transaction_id, "status": status}, to=request.sid)
        db.session.remove()
